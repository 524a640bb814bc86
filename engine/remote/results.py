"""The result store: where a remote worker leaves result PNGs and the bot picks them up.

Never inside stream entries, which are read whole and kept in memory: by default Redis keys
that expire (so a bot that never comes back for them leaks nothing), or a folder that the bot
and its workers share (``file:///srv/imaginebot-results``), for big images on a busy bot. A
ref is ``job/attempt/name`` (``protocol.result_ref``), checked by the bot before use, so a
worker can point only at a file of the attempt the bot sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path
from typing import Protocol, cast
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis

from engine.remote.protocol import KEEP_SECONDS, Keys


class ResultStore(Protocol):
    kind: str

    async def put(self, ref: str, data: bytes) -> None: ...

    async def get(self, ref: str) -> bytes | None:
        """The file's bytes, or None if it is gone (expired, deleted, never written)."""

    async def delete(self, refs: list[str]) -> None: ...


class RedisResults:
    """Result files as Redis keys with a TTL (the default)."""

    kind = "redis"

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def put(self, ref: str, data: bytes) -> None:
        await self._redis.set(self._keys.result(ref), data, ex=KEEP_SECONDS)

    async def get(self, ref: str) -> bytes | None:
        return cast(bytes | None, await self._redis.get(self._keys.result(ref)))

    async def delete(self, refs: list[str]) -> None:
        if refs:
            await self._redis.delete(*(self._keys.result(ref) for ref in refs))


class FileResults:
    """Result files in a folder shared by the bot and the workers (``file://`` URL)."""

    kind = "file"

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, ref: str) -> Path:
        return self._root / ref

    async def put(self, ref: str, data: bytes) -> None:
        path = self._path(ref)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        await asyncio.to_thread(write)

    async def get(self, ref: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self._path(ref).read_bytes)
        except FileNotFoundError:
            return None

    async def delete(self, refs: list[str]) -> None:
        # Every ref of one call belongs to one attempt's folder (job/attempt/).
        folders = {self._path(ref).parent for ref in refs}
        for folder in folders:
            await asyncio.to_thread(shutil.rmtree, folder, True)
            with contextlib.suppress(OSError):
                folder.parent.rmdir()  # the job's folder, once its last attempt is gone


def result_store(setting: str, redis: Redis, keys: Keys) -> ResultStore:
    """The store named by IMAGINEBOT_RESULT_STORE (``redis`` or ``file:///folder``)."""
    if setting == "redis":
        return RedisResults(redis, keys)
    url = urlsplit(setting)
    if url.scheme != "file" or not url.path:
        raise ValueError(f"result store {setting!r}: use `redis` or file:///folder")
    return FileResults(Path(unquote(url.path)) / keys.prefix)
