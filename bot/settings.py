"""All of imaginebot's settings: the engine's plus Discord, ledger, queue and limits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import NoDecode

from bot.ledger.config import LedgerSettings
from engine.settings import EngineSettings, split_list

IdSet = Annotated[set[int], NoDecode]
StrList = Annotated[list[str], NoDecode]


class Settings(LedgerSettings, EngineSettings):
    discord_token: SecretStr | None = Field(None, description="Bot token; never logged.")
    discord_api_url: str = Field("https://discord.com/api/v10",
                                 description="REST base: Discord, a proxy such as nirn-proxy, or "
                                 "the local emulator.")
    discord_gateway_url: str = Field("wss://gateway.discord.gg/",
                                     description="Gateway websocket URL.")
    admin_user_ids: IdSet = Field(default_factory=set, description="Users allowed the admin "
                                  "commands, besides the application owner.")
    allowed_channel_ids: IdSet = Field(default_factory=set,
                                       description="If set, commands work only in these channels.")
    price_per_image: int = Field(1, ge=0, description="Credits per image at the base size/steps.")
    price_base_pixels: int = Field(1024 * 1024, ge=1, description="Pixels one base-price image "
                                   "may have.")
    price_base_steps: int = Field(30, ge=1, description="Steps one base-price image may have.")
    queue_per_user: int = Field(3, ge=1, description="Queued jobs one user may have.")
    queue_global: int = Field(50, ge=1, description="Queued jobs in all.")
    crash_limit: int = Field(2, ge=1, description="Worker crashes or stalls after which the "
                             "same request (every parameter alike but the seeds) is refused, "
                             "free of charge.")
    cooldown_seconds: float = Field(3, ge=0, description="Pause between one user's requests.")
    max_prompt_length: int = Field(1000, ge=1, le=6000, description="Longest prompt, in "
                                   "characters.")
    blocklist: StrList = Field(default_factory=list, description="Words refused in prompts.")
    plugins_disabled: StrList = Field(default_factory=list, description="Plugins not to load.")
    backup_dir: Path = Field(Path("backups"), description="Daily SQLite backups go here.")
    backup_keep: int = Field(7, ge=1, description="Backups kept.")
    job_retention_days: int = Field(30, ge=1, description="Finished jobs older than this are "
                                    "pruned.")

    @field_validator("admin_user_ids", "allowed_channel_ids", "blocklist", "plugins_disabled",
                     mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return split_list(value)


def settings_table() -> str:
    """The README's settings table, made from the fields so it cannot drift from the code.

    The core settings come first, then each built-in plugin's, found through the plugin loader
    as everywhere in core code. The loader is imported here rather than at the top because it
    loads discord.py and the plugins, which reading settings never needs.
    """
    from bot._plugin_registry import PluginRegistry

    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    rows += [_table_row(Settings.variable(name), field)
             for name, field in Settings.model_fields.items()]
    plugins = PluginRegistry(Settings.model_construct(), entry_point_group=None)
    for model in plugins.settings_models():
        for name, field in model.model_fields.items():
            old = ", ".join(f"`{variable}`" for variable in model.old_variables(name))
            note = f" Formerly {old} (deprecated; read until the next release)." if old else ""
            rows.append(_table_row(model.variable(name), field, note))
    return "\n".join(rows)


def _table_row(variable: str, field: FieldInfo, note: str = "") -> str:
    default = field.get_default(call_default_factory=True)
    if isinstance(default, set | list):
        shown = ", ".join(map(str, default)) or "(empty)"
    else:
        shown = "(unset)" if default is None else str(default)
    return f"| `{variable}` | `{shown}` | {field.description or ''}{note} |"

