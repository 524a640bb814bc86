from bot.plugin_api import Plugin, ResultAction


async def _noop(bot, interaction, job, index) -> None:
    return None


plugin = Plugin(name="beta", actions=[
    ResultAction(key="redo", emoji="🔄", row=0, order=1, callback=_noop),
    ResultAction(key="first", label="First", row=3, order=-1, callback=_noop),
    ResultAction(key="other", label="Upscaled only", kinds=frozenset({"upscale"}),
                 callback=_noop),
])
