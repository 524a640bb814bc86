"""Races the ledger must win on both databases: overspending and double grants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.ledger import InsufficientCredits, Ledger
from tests.support.ledger import DIALECTS, FakeClock, database_url

USER = 175928847299117063


@pytest.fixture(params=DIALECTS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with database_url(request.param, tmp_path) as url:
        opened = await Ledger.connect(url, FakeClock(), signup_credits=0, daily_credits=30)
        yield opened
        assert await opened.audit() == []
        await opened.close()


async def test_concurrent_holds_never_overspend(ledger: Ledger) -> None:
    assert await ledger.touch(USER) == 30

    async def try_hold(n: int) -> int | None:
        try:
            return await ledger.hold(USER, 1, f"job:{n}")
        except InsufficientCredits:
            return None

    results = await asyncio.gather(*(try_hold(n) for n in range(100)))
    held = [hold_id for hold_id in results if hold_id is not None]
    assert len(held) == 30
    assert await ledger.balance(USER) == 0
    assert await ledger.pending_holds(USER) == 30


async def test_concurrent_first_touches_grant_once(ledger: Ledger) -> None:
    balances = await asyncio.gather(*(ledger.touch(USER) for _ in range(50)))
    assert set(balances) == {30}
    assert [entry.kind for entry in await ledger.history(USER)] == ["daily"]


async def test_concurrent_capture_and_release_resolve_once(ledger: Ledger) -> None:
    await ledger.touch(USER)
    hold_ids = [await ledger.hold(USER, 1, f"job:{n}") for n in range(10)]
    outcomes = await asyncio.gather(*(action(hold_id) for hold_id in hold_ids
                                      for action in (ledger.capture, ledger.release)))
    assert outcomes.count(True) == 10
    assert await ledger.pending_holds(USER) == 0
    captured = [await ledger.hold_status(hold_id) for hold_id in hold_ids].count("captured")
    assert await ledger.balance(USER) == 30 - captured


async def test_concurrent_replays_of_one_key_hold_once(ledger: Ledger) -> None:
    await ledger.touch(USER)
    hold_ids = await asyncio.gather(*(ledger.hold(USER, 5, "job:same") for _ in range(20)))
    assert len(set(hold_ids)) == 1
    assert await ledger.balance(USER) == 25


async def test_concurrent_joined_holds_never_overspend(ledger: Ledger) -> None:
    assert await ledger.touch(USER) == 30

    async def try_hold(n: int) -> int | None:
        try:
            async with ledger.transaction() as conn:
                return await ledger.hold(USER, 1, f"job:{n}", connection=conn)
        except InsufficientCredits:
            return None

    results = await asyncio.gather(*(try_hold(n) for n in range(60)))
    assert len([hold_id for hold_id in results if hold_id is not None]) == 30
    assert await ledger.balance(USER) == 0


async def test_sqlite_writers_in_one_process_never_wait_for_each_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With no busy timeout, any two of this process's write transactions that overlapped
    # would fail with "database is locked" instead of waiting.
    monkeypatch.setattr("bot.database.SQLITE_BUSY_TIMEOUT_MS", 0)
    ledger = await Ledger.connect(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", FakeClock(),
                                  signup_credits=0, daily_credits=0)
    try:
        await ledger.grant(USER, 1000, 0, "start", "start")

        async def pair(n: int) -> None:
            if n % 2:
                hold_id = await ledger.hold(USER, 1, f"job:{n}")
            else:
                async with ledger.transaction() as conn:
                    hold_id = await ledger.hold(USER, 1, f"job:{n}", connection=conn)
            await ledger.touch(USER)
            assert await ledger.capture(hold_id) is True

        async def worker(first: int) -> None:
            for n in range(first, 200, 20):
                await pair(n)

        await asyncio.gather(*(worker(first) for first in range(20)))
        assert await ledger.balance(USER) == 800
        assert await ledger.audit() == []
    finally:
        await ledger.close()
