"""The loop watchdog: a blocked loop is reported with the blocking function on its stack."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

from bot.loopwatch import LoopWatch
from tests.support.bot import idle_bot

WATCHDOG = "bot.loopwatch"


async def render_synchronously() -> None:
    """Stands for any blocking call made on the loop (a Pillow save, a big json.dumps)."""
    time.sleep(1.5)  # noqa: ASYNC251 - blocking the loop is the point


async def test_a_blocked_loop_is_reported_with_the_blocking_stack(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=WATCHDOG)
    watch = LoopWatch(threshold=1.0)
    watch.start()
    try:
        await asyncio.sleep(0.3)
        await asyncio.create_task(render_synchronously(), name="renderer")
        await asyncio.sleep(0.6)  # a few beats, so the recovery is seen
    finally:
        watch.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == WATCHDOG]
    assert watch.stalls == 1
    assert len(messages) == 2, messages
    stalled, recovered = messages
    assert "event loop stalled" in stalled
    assert "render_synchronously" in stalled and "time.sleep(1.5)" in stalled
    assert "task 'renderer'" in stalled
    assert "recovered" in recovered
    total = float(recovered.split("after a ")[1].split(" s")[0])
    assert 1.0 < total < 3.0  # 1.5 s less the part of a beat interval before the block


async def test_a_healthy_loop_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=WATCHDOG)
    watchers = loop_watch_threads()
    watch = LoopWatch(threshold=1.0)
    watch.start()
    watch.start()  # idempotent: still one heartbeat chain and one thread
    assert loop_watch_threads() == watchers + 1
    try:
        for _ in range(20):
            time.sleep(0.05)  # noqa: ASYNC251 - short blocks stay under the threshold
            await asyncio.sleep(0.05)
    finally:
        watch.stop()
        watch.stop()
    assert watch.stalls == 0
    assert [r for r in caplog.records if r.name == WATCHDOG] == []
    assert loop_watch_threads() == watchers


async def test_the_bot_watches_its_loop_while_it_runs(tmp_path: Path) -> None:
    before = loop_watch_threads()
    async with idle_bot(tmp_path) as (_, bot):
        assert loop_watch_threads() == before + 1
        assert bot.loopwatch.stalls == 0
    assert loop_watch_threads() == before


def loop_watch_threads() -> int:
    return sum(thread.name == "loop-watch" for thread in threading.enumerate())
