"""Database calls on the job path, retried a few times with a short backoff.

"database is locked" past the busy timeout, a full disk that a log rotation frees, a PostgreSQL
failover: each passes in moments, and one of them must not fail a job (or, before this, stop the
dispatcher for good). What still fails after the last try is raised to the caller, which puts
the job back or fails it, except on the few steps that must not be given up half done
(``persisting``). Only calls that are safe to repeat are retried: updates that set values, and
ledger resolutions, which resolve a hold at most once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: Seconds before each retry; about 2.6 s in all before the error is raised.
DELAYS = (0.1, 0.5, 2.0)


def transient(error: DBAPIError) -> bool:
    """Locked, busy, full, disconnected: errors that a later try may not meet."""
    return (isinstance(error, OperationalError | InterfaceError)
            or error.connection_invalidated)


async def retrying(call: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    return await _attempts(DELAYS, call, *args, **kwargs)


async def persisting(call: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Like :func:`retrying`, but never gives up on a transient error: after the last delay it
    tries again every ``DELAYS[-1]`` seconds until the database answers.

    For a step that must not be given up half done while the process lives: the record of a
    result already posted (giving up means posting it again after a restart, and charging it
    only then), or an ending whose hold is already released (giving up means the job runs
    again, and ends for the wrong reason). Cancelling the task (shutdown) still stops it.
    """
    return await _attempts(itertools.chain(DELAYS, itertools.repeat(DELAYS[-1])), call,
                           *args, **kwargs)


async def _attempts(delays: Iterable[float], call: Callable[P, Awaitable[T]], *args: P.args,
                    **kwargs: P.kwargs) -> T:
    """Call, and after each transient error wait the next of ``delays`` and call again; once
    they are used up, the last call's error is raised."""
    for delay in delays:
        try:
            return await call(*args, **kwargs)
        except DBAPIError as error:
            if not transient(error):
                raise
            log.warning("database error in %s (%s); trying again in %.1f s",
                        getattr(call, "__qualname__", call), str(error.orig or error)
                        .splitlines()[0], delay)
        await asyncio.sleep(delay)
    return await call(*args, **kwargs)
