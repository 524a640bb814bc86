"""Database calls on the job path, retried a few times with a short backoff.

"database is locked" past the busy timeout, a full disk that a log rotation frees, a PostgreSQL
failover: each passes in moments, and one of them must not fail a job (or, before this, stop the
dispatcher for good). What still fails after the last try is raised to the caller, which puts
the job back or fails it. Only calls that are safe to repeat are retried: updates that set
values, and ledger resolutions, which resolve a hold at most once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
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
    for delay in DELAYS:
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
