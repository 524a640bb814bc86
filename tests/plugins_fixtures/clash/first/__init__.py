from bot.plugin_api import Plugin, ResultAction


async def _noop(bot, interaction, job, index) -> None:
    return None


plugin = Plugin(name="first", namespace="same",
                actions=[ResultAction(key="go", label="first", callback=_noop)])
