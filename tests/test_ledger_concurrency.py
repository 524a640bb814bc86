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
