"""How every imaginebot settings class is read: ``IMAGINEBOT_*`` variables, then imaginebot.toml.

The engine's, the ledger's and the bot's settings (which extend both) derive from
:class:`FileSettings`, so one precedence rule and one file configure them all.
"""

from __future__ import annotations

from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "IMAGINEBOT_"
#: Read from the working directory; the environment wins over it.
TOML_FILE = "imaginebot.toml"


class FileSettings(BaseSettings):
    """Explicit arguments, then ``IMAGINEBOT_<FIELD>``, then ``<field>`` in imaginebot.toml."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        toml_file=TOML_FILE,
        extra="ignore",
        validate_default=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return cls.sources(init_settings)

    @classmethod
    def sources(cls, init_settings: PydanticBaseSettingsSource
                ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Where values come from, first wins; subclasses that read elsewhere override this."""
        return (init_settings, EnvSettingsSource(cls), TomlConfigSettingsSource(cls))
