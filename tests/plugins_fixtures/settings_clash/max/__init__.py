from typing import ClassVar

from bot.plugin_api import Plugin, PluginSettings


class MaxSettings(PluginSettings):
    namespace: ClassVar[str] = "max"

    # IMAGINEBOT_MAX_PIXELS is the engine's own limit.
    pixels: int = 1


plugin = Plugin(name="max", settings=MaxSettings)
