"""Background tasks that are never lost: restarted when they die, stopped without raising.

A task that dies of an exception nobody awaits ends silently; for the job dispatcher that meant
a bot that accepted jobs and never ran them. Here every death is logged and followed by a
restart (after a pause that doubles while it keeps dying), and shutdown never re-raises what a
task died of.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

#: Seconds before a task that died is started again; doubles up to the maximum.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0


def supervised(name: str, body: Callable[[], Awaitable[None]], closing: asyncio.Event, *,
               on_restart: Callable[[], object] = lambda: None) -> asyncio.Task[None]:
    """Run ``body`` in a task that starts it again whenever it raises, until ``closing``."""

    async def run() -> None:
        delay = RESTART_DELAY
        loop = asyncio.get_running_loop()
        while not closing.is_set():
            began = loop.time()
            try:
                await body()
                return
            except Exception:
                if loop.time() - began > MAX_RESTART_DELAY:
                    delay = RESTART_DELAY  # a rare failure, not a loop of them
                log.exception("%s died; starting it again in %.1f s", name, delay)
            with contextlib.suppress(TimeoutError):  # unless closing comes first
                await asyncio.wait_for(closing.wait(), delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)
            on_restart()

    return asyncio.create_task(run(), name=name)


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it; what it died of was logged then, and is not raised."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("task %s had failed; shutting down anyway", task.get_name())
