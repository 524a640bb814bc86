from bot.plugin_api import Plugin, ResultAction


async def _noop(bot, interaction, job, index) -> None:
    return None


# A ":" in the action key would make the custom_id ambiguous.
plugin = Plugin(name="bad_template", actions=[ResultAction(key="a:b", label="X", callback=_noop)])
