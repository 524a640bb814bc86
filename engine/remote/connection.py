"""The Redis client both sides use, and typed forms of the stream commands they need.

redis-py types stream replies loosely (any of bytes, str, int or lists); these wrappers say
what a client without ``decode_responses`` gets back, in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.settings import EngineSettings

#: Redis unreachable, or too slow to answer (``OSError`` includes asyncio's timeouts).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

#: A read failed because its stream or consumer group is gone (FLUSHALL while it waited, or
#: Redis back empty): recreate the group and read again.
GROUP_GONE = ("NOGROUP", "UNBLOCKED")

Fields = dict[bytes, bytes]
Entry = tuple[bytes, Fields]


def redis_client(url: str, settings: EngineSettings) -> Redis:
    """A client whose commands on a dead connection fail within a few seconds."""
    client: Redis = Redis.from_url(url, socket_timeout=settings.heartbeat_seconds + 5,
                                   socket_connect_timeout=5, health_check_interval=30)
    return client


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` (and the stream) unless it exists: Redis may have come
    back empty (FLUSHALL, or a restart without its append-only file)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(reply: Any) -> list[tuple[str, list[Entry]]]:
    return [(text(stream), cast(list[Entry], entries)) for stream, entries in reply or []]


async def read(redis: Redis, streams: Mapping[str, bytes | str], *, count: int,
               block: int) -> list[tuple[str, list[Entry]]]:
    """XREAD: (stream, entries) for each stream with entries after its given id."""
    return _entries(await redis.xread(cast(Any, dict(streams)), count=count, block=block))


async def read_group(redis: Redis, group: str, consumer: str, stream: str, *, count: int,
                     block: int | None = None) -> list[Entry]:
    """XREADGROUP ``>``: entries never delivered to the group, now pending for ``consumer``."""
    reply = await redis.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block)
    return [entry for _, entries in _entries(reply) for entry in entries]


async def add(redis: Redis, stream: str, fields: Mapping[str, bytes], *,
              maxlen: int | None = None, approximate: bool = True) -> bytes:
    entry_id = await redis.xadd(stream, cast(Any, dict(fields)), maxlen=maxlen,
                                approximate=approximate)
    return cast(bytes, entry_id)


async def autoclaim(redis: Redis, stream: str, group: str, consumer: str,
                    min_idle_ms: int) -> list[Entry]:
    """XAUTOCLAIM every pending entry idle at least ``min_idle_ms``, with its fields."""
    claimed: list[Entry] = []
    start: bytes | str = "0-0"
    while True:
        reply = await redis.xautoclaim(stream, group, consumer, min_idle_ms, start_id=start,
                                       count=100)
        start, entries = reply[0], reply[1]
        claimed += cast(list[Entry], entries)
        if text(start) == "0-0":
            return claimed


async def last_entries(redis: Redis, stream: str, count: int) -> list[Entry]:
    return cast(list[Entry], await redis.xrevrange(stream, count=count))


async def entry_exists(redis: Redis, stream: str, entry_id: str) -> bool:
    return bool(await redis.xrange(stream, min=entry_id, max=entry_id))


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]]) -> None:
    """Cancel the tasks, again and again, until they have ended. One cancel is not enough: a
    cancel that lands just as redis-py's socket timeout fires comes out of the read as a
    TimeoutError, which a loop that outlives an unreachable Redis survives."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
