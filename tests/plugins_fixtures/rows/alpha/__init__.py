from bot.plugin_api import Plugin, ResultAction


async def _noop(bot, interaction, job, index) -> None:
    return None


plugin = Plugin(name="alpha", actions=[
    ResultAction(key="v", label="V{n}", per_image=True, row=1, callback=_noop),
    ResultAction(key="u", label="U{n}", per_image=True, row=0, callback=_noop),
    ResultAction(key="last", emoji="🗑️", row=3, order=9, callback=_noop),
])
