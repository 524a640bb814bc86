from bot.plugin_api import Plugin, ResultAction

#: (bot, job) of every visibility check, for the test to look at.
SEEN: list[tuple[object, object]] = []


async def _noop(bot, interaction, job, index) -> None:
    return None


def _grids(bot, job) -> bool:
    SEEN.append((bot, job))
    return job.image_count > 1


def _broken(bot, job) -> bool:
    raise RuntimeError("visibility check failed")


plugin = Plugin(name="gamma", actions=[
    ResultAction(key="always", label="Always", callback=_noop),
    ResultAction(key="grids", label="Grids only", callback=_noop, order=1, visible=_grids),
    ResultAction(key="broken", label="Broken", callback=_noop, order=2, visible=_broken),
])
