from bot.plugin_api import Plugin, ResultAction


async def _noop(bot, interaction, job, index) -> None:
    return None


def _broken(settings, job) -> bool:
    raise RuntimeError("visibility check failed")


plugin = Plugin(name="gamma", actions=[
    ResultAction(key="always", label="Always", callback=_noop),
    ResultAction(key="grids", label="Grids only", callback=_noop, order=1,
                 visible=lambda settings, job: job.image_count > 1),
    ResultAction(key="broken", label="Broken", callback=_noop, order=2, visible=_broken),
])
