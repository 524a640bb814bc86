"""Per-plugin settings: ``IMAGINEBOT_<NAMESPACE>_*`` variables and ``<namespace>_*`` toml keys.

A plugin declares a :class:`PluginSettings` subclass; ``IMAGINEBOT_UPSCALE_MODEL`` (or
``upscale_model`` in ``imaginebot.toml``) sets field ``model`` of the plugin whose namespace is
``upscale``. The class lives on the engine side because engine operations read their plugin's
settings inside the worker process, which must never import discord or the database layer.
Plugins import it from :mod:`engine.operations` or :mod:`bot.plugin_api`.

Settings that moved here from the core classes keep their old names for one release through
``deprecated_names``; each old name in use is logged as a warning when the settings are read.
"""

from __future__ import annotations

import logging
import os
import tomllib
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from imaginebot_common.settings import TOML_FILE, FileSettings, variable_name

log = logging.getLogger(__name__)


S = TypeVar("S", bound="PluginSettings")


class PluginSettings(FileSettings):
    """Base of a plugin's settings; set ``namespace`` to the plugin's namespace.

    Precedence: explicit arguments, ``IMAGINEBOT_<NS>_<FIELD>``, a deprecated variable,
    ``<ns>_<field>`` in ``imaginebot.toml``, a deprecated toml key, the field's default.
    """

    # The file is read by :meth:`sources` itself, keys prefixed by the namespace.
    model_config = SettingsConfigDict(toml_file=None)

    #: The plugin's namespace; its variables are ``IMAGINEBOT_<NAMESPACE>_<FIELD>``.
    namespace: ClassVar[str] = ""
    #: Names of the previous release, still read for one release: old name as the toml key
    #: (``upscaler_model``, read also as ``IMAGINEBOT_UPSCALER_MODEL``) -> field name.
    deprecated_names: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable of ``field``, as the admin types it."""
        return variable_name(f"{cls.namespace}_{field}")

    @classmethod
    def old_variables(cls, field: str) -> list[str]:
        """The deprecated variables that still set ``field`` (see ``deprecated_names``)."""
        return [variable_name(name) for name, target in cls.deprecated_names.items()
                if target == field]

    @classmethod
    def sources(cls, init_settings: PydanticBaseSettingsSource
                ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = _read_toml(Path(TOML_FILE))
        prefix = f"{cls.namespace}_".lower()
        in_toml = {key[len(prefix):]: value for key, value in toml.items()
                   if key.lower().startswith(prefix)}
        old_env = {name: os.environ.get(variable_name(name)) for name in cls.deprecated_names}
        return (
            init_settings,
            EnvSettingsSource(cls, env_prefix=variable_name(prefix)),
            _Values(cls, _renamed(cls, old_env, variable_name)),
            _Values(cls, in_toml),
            _Values(cls, _renamed(cls, toml, lambda name: f"{name} in {TOML_FILE}")),
        )


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open("rb") as file:
        return tomllib.load(file)


def _renamed(cls: type[PluginSettings], values: Mapping[str, Any],
             shown: Callable[[str], str]) -> dict[str, Any]:
    """The values found under deprecated names, by field; each one in use is logged."""
    found: dict[str, Any] = {}
    for old, field in cls.deprecated_names.items():
        value = values.get(old)
        if value is None:
            continue
        log.warning("%s is deprecated and stops working in the next release; use %s instead",
                    shown(old), shown(f"{cls.namespace}_{field}"))
        found[field] = value
    return found


class _Values(PydanticBaseSettingsSource):
    """Values already found (toml keys with the prefix taken off, deprecated names)."""

    def __init__(self, settings_cls: type[BaseSettings], values: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = dict(values)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {name: value for name, value in self._values.items()
                if name in self.settings_cls.model_fields}


_PER_OWNER: weakref.WeakKeyDictionary[Any, dict[type[PluginSettings], PluginSettings]] = (
    weakref.WeakKeyDictionary())


def settings_of(owner: Any, cls: type[S]) -> S:
    """``cls()`` read once per ``owner`` (the worker's runner), so a job does not re-read the
    environment and the file, and a deprecated name is logged once rather than on every job."""
    loaded = _PER_OWNER.setdefault(owner, {})
    if cls not in loaded:
        loaded[cls] = cls()
    found = loaded[cls]
    assert isinstance(found, cls)
    return found
