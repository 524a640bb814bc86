from bot.plugin_api import Plugin, ResultAction


async def _noop(bot, interaction, job, index) -> None:
    return None


plugin = Plugin(name="second", namespace="same",
                actions=[ResultAction(key="go", label="second", callback=_noop)])
