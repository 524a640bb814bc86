from bot.plugin_api import Plugin


def setup() -> Plugin:
    raise RuntimeError("setup exploded")
