"""How every imaginebot settings class is read: ``IMAGINEBOT_*`` variables, then imaginebot.toml.

The engine's, the ledger's and the bot's settings (which extend both) derive from
:class:`FileSettings`, so one precedence rule and one file configure them all.
"""

from __future__ import annotations

from pydantic import ValidationError
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


def variable_name(name: str) -> str:
    """The environment variable for a setting name, as the admin types it."""
    return f"{ENV_PREFIX}{name}".upper()


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

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable of ``field``."""
        return variable_name(field)

    @classmethod
    def old_variables(cls, field: str) -> list[str]:
        """Deprecated variables that still set ``field``; none unless a subclass has some."""
        return []

    @classmethod
    def describe_invalid_setting(cls, error: ValidationError) -> str:
        """One line naming the first bad setting as the admin would type it, with its old name
        if it has one."""
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        old = cls.old_variables(field)
        also = f" (or its old name {', '.join(old)})" if old else ""
        return f"invalid setting {cls.variable(field)}{also}: {first['msg']}"
