"""The Redis fixtures the scale-out fault tests stand on (tests/support/redis.py) do what they
claim: a clean database, a server that forgets or keeps its data across kill -9, and a proxy
whose blackhole holds bytes without closing the connection."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from tests.support.redis import RedisServer, TcpProxy


def test_redis_url_starts_empty(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("left-over", 1)  # the next test's fixture must flush it
    finally:
        client.close()


def test_redis_url_is_flushed_between_tests(redis_url: str) -> None:
    test_redis_url_starts_empty(redis_url)


def test_kill_9_keeps_the_aof_and_empty_restart_forgets(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    try:
        client.xadd("stream", {"n": "1"})
        redis_server.kill()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        redis_server.restart()
        assert client.xlen("stream") == 1
        redis_server.restart(empty=True)
        assert client.exists("stream") == 0
    finally:
        client.close()


def test_proxy_blackhole_holds_bytes_until_healed(
        redis_url: str, tcp_proxy: Callable[[str], TcpProxy]) -> None:
    proxy = tcp_proxy(redis_url)
    client = redis.Redis.from_url(proxy.url, socket_timeout=0.3)
    direct = redis.Redis.from_url(redis_url)
    try:
        assert client.set("key", "before")
        assert proxy.connections == 1
        proxy.blackhole()
        with pytest.raises(redis.TimeoutError):
            client.set("key", "during")
        assert direct.get("key") == b"before"  # the write is held, not delivered
        assert proxy.connections == 1  # and the proxy closed nothing
        proxy.heal()
        deadline = time.monotonic() + 5
        while direct.get("key") != b"during" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert direct.get("key") == b"during"  # delivered late, as after a partition
        proxy.cut()
        assert proxy.connections == 0
    finally:
        client.close()
        direct.close()
