"""The gateway websocket: HELLO, IDENTIFY/READY, heartbeats, RESUME with replay, dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from sandbox.errors import EmulatorError

Frame = dict[str, Any]
DISPATCH, HEARTBEAT, IDENTIFY, RESUME, REQUEST_MEMBERS = 0, 1, 2, 6, 8
INVALID_SESSION, HELLO, HEARTBEAT_ACK = 9, 10, 11
CLOSE_UNKNOWN_ERROR, CLOSE_DECODE_ERROR, CLOSE_AUTH_FAILED = 4000, 4002, 4004
CLOSE_ALREADY_AUTHENTICATED = 4005


def _zlib_stream() -> Callable[[bytes], bytes]:
    """One deflate stream per connection; each frame ends in a sync flush (00 00 ff ff)."""
    stream = zlib.compressobj()
    return lambda data: stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)


def _zstd_stream() -> Callable[[bytes], bytes]:
    """What discord.py asks for when Python 3.14's compression.zstd or zstandard is there."""
    try:
        from compression.zstd import ZstdCompressor

        compressor = ZstdCompressor()
        return lambda data: bytes(compressor.compress(data, mode=ZstdCompressor.FLUSH_BLOCK))
    except ImportError:
        import zstandard

        stream = zstandard.ZstdCompressor().compressobj()
        return lambda data: bytes(stream.compress(data) + stream.flush(
            zstandard.COMPRESSOBJ_FLUSH_BLOCK))


class _Encoder:
    """Frames as compressed binary messages (``compress=`` in the URL) or plain text."""

    def __init__(self, compress: str | None) -> None:
        streams = {"zlib-stream": _zlib_stream, "zstd-stream": _zstd_stream}
        if compress is not None and compress not in streams:
            raise ValueError(f"unsupported compress={compress}")
        self.kind = compress
        self._compress = None if compress is None else streams[compress]()

    def encode(self, frame: Frame) -> bytes | str:
        text = json.dumps(frame)
        return text if self._compress is None else self._compress(text.encode())


class _Connection:
    """One websocket; frames go out in order through a single writer task."""

    def __init__(self, ws: web.WebSocketResponse, encoder: _Encoder) -> None:
        self.ws = ws
        self._encoder = encoder
        self._queue: asyncio.Queue[Frame] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write())

    def send(self, frame: Frame) -> None:
        self._queue.put_nowait(frame)

    async def _write(self) -> None:
        while True:
            data = self._encoder.encode(await self._queue.get())
            try:
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(data)
            except (ConnectionError, RuntimeError):
                return

    async def close(self, code: int, message: str = "") -> None:
        await self.flush()
        self.stop()
        await self.ws.close(code=code, message=message.encode())

    def stop(self) -> None:
        """End the writer task; also when the client hung up first, so no task is left."""
        self._writer.cancel()

    async def flush(self) -> None:
        for _ in range(100):
            if self._queue.empty():
                return
            await asyncio.sleep(0.005)


class GatewaySession:
    """A session survives its websocket: events sent while it is down are replayed on RESUME."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(16)
        self.seq = 0
        self.intents = 0
        self.log: list[Frame] = []
        self.connection: _Connection | None = None

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.seq += 1
        frame = {"op": DISPATCH, "t": event, "s": self.seq, "d": data}
        self.log.append(frame)
        if self.connection is not None:
            self.connection.send(frame)


class Gateway:
    """Serves one bot. ``on_identify(session)`` dispatches READY and GUILD_CREATE;
    ``members(request)`` answers REQUEST_GUILD_MEMBERS with a GUILD_MEMBERS_CHUNK body."""

    def __init__(self, token: str, on_identify: Callable[[GatewaySession], None],
                 members: Callable[[dict[str, Any]], dict[str, Any]],
                 heartbeat_interval_ms: int = 41250) -> None:
        self.token = token
        self._on_identify = on_identify
        self._members = members
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.session: GatewaySession | None = None
        self.connected = asyncio.Event()
        self.identifies = 0
        self.resumes = 0
        self.compression: str | None = None
        self._connections: set[_Connection] = set()

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        if self.session is None:
            raise EmulatorError("no bot has identified on the gateway yet")
        self.session.dispatch(event, data)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            encoder = _Encoder(request.query.get("compress"))
            self.compression = encoder.kind
        except ValueError as error:
            await ws.close(code=CLOSE_DECODE_ERROR, message=str(error).encode())
            return ws
        conn = _Connection(ws, encoder)
        self._connections.add(conn)
        conn.send({"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                   "s": None, "t": None})
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    break
                await self._receive(conn, json.loads(message.data))
        finally:
            conn.stop()
            self._connections.discard(conn)
            if self.session is not None and self.session.connection is conn:
                self.session.connection = None
                self.connected.clear()
        return ws

    async def _receive(self, conn: _Connection, payload: dict[str, Any]) -> None:
        op, data = payload.get("op"), payload.get("d") or {}
        if op == HEARTBEAT:
            conn.send({"op": HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == IDENTIFY:
            await self._identify(conn, data)
        elif op == RESUME:
            await self._resume(conn, data)
        elif op == REQUEST_MEMBERS and self.session is not None:
            self.session.dispatch("GUILD_MEMBERS_CHUNK", self._members(data))

    async def _identify(self, conn: _Connection, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await conn.close(CLOSE_AUTH_FAILED, "Authentication failed.")
            return
        if self.session is not None and self.session.connection is conn:
            await conn.close(CLOSE_ALREADY_AUTHENTICATED, "Already authenticated.")
            return
        self.identifies += 1
        self.session = GatewaySession()
        self.session.intents = int(data.get("intents") or 0)
        self.session.connection = conn
        self._on_identify(self.session)
        self.connected.set()

    async def _resume(self, conn: _Connection, data: dict[str, Any]) -> None:
        session = self.session
        if session is None or data.get("session_id") != session.id or data.get(
                "token") != self.token:
            conn.send({"op": INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        self.resumes += 1
        session.connection = conn
        seen = data.get("seq") or 0
        for frame in session.log:
            if frame["s"] > seen:
                conn.send(frame)
        session.dispatch("RESUMED", {"_trace": ["sandbox"]})
        self.connected.set()

    async def disconnect(self, resumable: bool = True) -> None:
        """Drop the bot's websocket (close 4000). A resumable session replays what the bot
        missed; otherwise its RESUME gets INVALID_SESSION and it must IDENTIFY again."""
        if self.session is None or self.session.connection is None:
            raise EmulatorError("the bot is not connected to the gateway")
        conn, self.session.connection = self.session.connection, None
        self.connected.clear()
        if not resumable:
            self.session = None
        await conn.close(CLOSE_UNKNOWN_ERROR, "Sandbox dropped the connection.")

    async def close(self) -> None:
        for conn in list(self._connections):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.close(1001, "Sandbox closing.")
