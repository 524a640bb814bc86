"""Redis for the scale-out tests: a clean server per test, one that a test can kill, and a proxy
that can cut a client off.

- ``redis_url``: a Redis URL whose database is empty. It is IMAGINEBOT_TEST_REDIS_URL (from
  .ci/redis.sh), flushed, or else a throwaway server started here once per run.
- ``redis_server``: a :class:`RedisServer` of the test's own, with ``appendonly yes``, that the
  test may ``kill()`` (SIGKILL, as ``kill -9``) and ``restart()`` on the same port, with its
  append-only file or empty.
- ``tcp_proxy``: makes a :class:`TcpProxy` in front of a Redis URL. A client given the proxy's
  URL can be blackholed: its bytes stop moving in both directions while its connection stays
  open, as when a route drops packets, which a closed socket cannot show.

Redis comes from Debian's redis-server package (``.ci/redis.sh`` installs it). With CI=true a
missing redis-server fails the run instead of skipping it, as PostgreSQL does in ledger.py.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

START_SECONDS = 10.0


def redis_server_binary() -> str:
    """The redis-server to run, or the test fails (CI) or is skipped (a laptop without it)."""
    binary = shutil.which("redis-server")
    if binary:
        return binary
    message = "Redis tests cannot run: no redis-server found (install it or run .ci/redis.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on a loopback port, its files in ``directory``.

    ``appendonly`` keeps every acknowledged write in an append-only file, as docs/scaleout.md
    asks of production servers; a SIGKILL of the process loses none of them (fsync only
    matters when the machine itself dies), so ``restart()`` brings them back.
    """

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        self.binary = redis_server_binary()
        self.directory = directory
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING (after loading its AOF, if any)."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.directory), "--logfile", str(self.directory / "log"),
             "--save", "", "--appendonly", "yes" if self.appendonly else "no",
             "--maxmemory-policy", "noeviction"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + START_SECONDS
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = (self.directory / "log").read_text(errors="replace")[-2000:]
                        self.kill()
                        raise RuntimeError(f"redis-server did not start:\n{log}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server, as ``kill -9``: no shutdown, no final save."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def restart(self, *, empty: bool = False) -> None:
        """Kill the server and start it again on the same port; ``empty`` deletes its files
        first, as a server that lost its disk or never had persistence."""
        self.kill()
        if empty:
            for path in self.directory.iterdir():
                if path.name != "log":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.start()


class TcpProxy:
    """A TCP proxy in front of one Redis server, running its own asyncio loop in a thread (so
    it keeps forwarding while a test blocks, and whatever loop the test runs).

    Give one client (a worker subprocess, say) the proxy's URL and the others the server's:
    ``blackhole()`` then stops that client's traffic, on open and new connections alike,
    without closing anything; what either side sends waits in buffers, and ``heal()`` delivers
    it late, as TCP does after a partition. ``cut()`` closes every connection instead.
    """

    def __init__(self, target_url: str) -> None:
        target = urlsplit(target_url)
        self._target = (target.hostname or "127.0.0.1", target.port or 6379)
        self._path = target.path
        self._loop = asyncio.new_event_loop()
        self._open = asyncio.Event()
        self._open.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy",
                                        daemon=True)
        self._thread.start()
        self.port = self._call(self._listen)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self._path}"

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now."""
        return self._call(self._count)

    def blackhole(self) -> None:
        self._call(self._set_open, False)

    def heal(self) -> None:
        self._call(self._set_open, True)

    def cut(self) -> None:
        self._call(self._close_all)

    def close(self) -> None:
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function`` (plain or async) on the proxy's loop and return its result."""
        async def run() -> Any:
            result = function(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def _count(self) -> int:
        return len(self._writers) // 2

    def _set_open(self, value: bool) -> None:
        if value:
            self._open.set()
        else:
            self._open.clear()

    async def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._close_all()

    async def _accept(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        await asyncio.gather(self._pump(client_reader, server_writer),
                             self._pump(server_reader, client_writer))
        for writer in (client_writer, server_writer):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy bytes one way; while blackholed, neither read nor write (a chunk read just
        before waits too)."""
        try:
            while True:
                await self._open.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._open.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            writer.transport.abort()
        else:
            writer.close()  # the peer closed: pass that on after what is still buffered


@functools.cache
def _session_server() -> str:
    """One server for the whole run, when .ci/redis.sh did not start one."""
    directory = Path(tempfile.mkdtemp(prefix="imaginebot-redis."))
    server = RedisServer(directory, appendonly=False)
    server.start()
    atexit.register(shutil.rmtree, directory, True)
    atexit.register(server.kill)
    return server.url


def shared_redis_url() -> str:
    """The run's shared Redis (IMAGINEBOT_TEST_REDIS_URL or a server started here)."""
    url = os.environ.get("IMAGINEBOT_TEST_REDIS_URL")
    if url:
        return url
    redis_server_binary()
    return _session_server()


@pytest.fixture
def redis_url() -> str:
    """A Redis URL whose database is empty at the start of the test."""
    url = shared_redis_url()
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (appendonly yes), to kill and restart."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str], TcpProxy]]:
    """Makes proxies in front of Redis URLs; all are closed after the test."""
    proxies: list[TcpProxy] = []

    def make(target_url: str) -> TcpProxy:
        proxies.append(TcpProxy(target_url))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()
