from bot.plugin_api import Plugin, ResultAction


async def _noop(bot, interaction, job, index) -> None:
    return None


plugin = Plugin(name="working", actions=[ResultAction(key="ok", label="OK", callback=_noop)],
                operation_modules=["tests.plugins_fixtures.broken.working"])
