"""Ledger behaviour, run on SQLite and on PostgreSQL with the same test code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from bot.ledger import (
    HoldInfo,
    InsufficientCredits,
    KeyReused,
    Ledger,
    UnknownHold,
    snowflake_created_at,
)
from bot.ledger.models import Transfer
from tests.support.ledger import FakeClock, postgres_server_url

# A snowflake made long before FakeClock's start, so the account is old enough.
OLD_USER = 175928847299117063
SIGNUP, DAILY = 200, 100


@pytest.fixture
async def ledger(ledger_url: str, clock: FakeClock) -> AsyncIterator[Ledger]:
    opened = await Ledger.connect(ledger_url, clock, signup_credits=SIGNUP, daily_credits=DAILY,
                                  hold_ttl=timedelta(hours=1))
    yield opened
    assert await opened.audit() == []
    await opened.close()


def test_snowflake_decodes_discord_epoch() -> None:
    # Discord's documented example: 175928847299117063 was made 2016-04-30 11:18:25.796 UTC.
    assert snowflake_created_at(175928847299117063) == datetime(2016, 4, 30, 11, 18, 25, 796000,
                                                                tzinfo=UTC)


async def test_first_touch_grants_signup_and_daily_once(ledger: Ledger) -> None:
    assert await ledger.touch(OLD_USER) == SIGNUP + DAILY
    assert await ledger.touch(OLD_USER) == SIGNUP + DAILY
    assert await ledger.balance(OLD_USER) == SIGNUP + DAILY
    assert [entry.kind for entry in await ledger.history(OLD_USER)] == ["daily", "signup"]


async def test_daily_allowance_each_utc_day(ledger: Ledger, clock: FakeClock) -> None:
    await ledger.touch(OLD_USER)
    clock.time = ledger.next_daily_at() - timedelta(microseconds=1)
    assert await ledger.touch(OLD_USER) == SIGNUP + DAILY
    clock.time = ledger.next_daily_at()
    assert await ledger.touch(OLD_USER) == SIGNUP + 2 * DAILY


async def test_next_daily_at_is_next_utc_midnight(ledger: Ledger, clock: FakeClock) -> None:
    clock.time = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert ledger.next_daily_at() == datetime(2027, 1, 1, tzinfo=UTC)


async def test_young_account_gets_daily_but_no_signup(ledger_url: str, clock: FakeClock) -> None:
    ledger = await Ledger.connect(ledger_url, clock, min_account_age=timedelta(days=7))
    try:
        young = clock.time - timedelta(days=1)
        assert await ledger.touch(OLD_USER, account_created_at=young) == 100
        # The snowflake of OLD_USER says 2016: old enough once the caller stops overriding it.
        assert await ledger.touch(OLD_USER) == 300
        assert await ledger.touch(OLD_USER) == 300
    finally:
        await ledger.close()


async def test_hold_capture_release_resolve_once(ledger: Ledger) -> None:
    await ledger.touch(OLD_USER)
    first = await ledger.hold(OLD_USER, 50, "job:1")
    second = await ledger.hold(OLD_USER, 30, "job:2")
    assert await ledger.balance(OLD_USER) == 220
    assert await ledger.pending_holds(OLD_USER) == 80
    assert await ledger.hold_status(first) == "pending"

    assert await ledger.capture(first) is True
    assert await ledger.capture(first) is False
    assert await ledger.release(first) is False
    assert await ledger.hold_status(first) == "captured"

    assert await ledger.release(second) is True
    assert await ledger.capture(second) is False
    assert await ledger.hold_status(second) == "released"

    assert await ledger.balance(OLD_USER) == 250
    assert await ledger.pending_holds(OLD_USER) == 0
    history = await ledger.history(OLD_USER, limit=100)
    assert sum(entry.amount for entry in history) == 250


async def test_hold_key_is_idempotent(ledger: Ledger) -> None:
    await ledger.touch(OLD_USER)
    hold_id = await ledger.hold(OLD_USER, 40, "job:x")
    assert await ledger.hold(OLD_USER, 40, "job:x") == hold_id
    assert await ledger.balance(OLD_USER) == 260
    with pytest.raises(KeyReused):
        await ledger.hold(OLD_USER, 41, "job:x")
    with pytest.raises(KeyReused):
        await ledger.grant(OLD_USER, 40, 1, "reuse", "job:x")


async def test_insufficient_credits_says_what_is_missing(ledger: Ledger) -> None:
    await ledger.touch(OLD_USER)
    with pytest.raises(InsufficientCredits) as raised:
        await ledger.hold(OLD_USER, 301, "big")
    assert (raised.value.available, raised.value.needed) == (300, 301)
    assert "301 needed" in str(raised.value) and "300 available" in str(raised.value)
    # A user who never interacted has nothing.
    with pytest.raises(InsufficientCredits):
        await ledger.hold(42, 1, "stranger")
    assert await ledger.balance(OLD_USER) == 300


@pytest.mark.parametrize("amount", [0, -5, 1.5, True])
async def test_amounts_must_be_positive_integers(ledger: Ledger, amount: object) -> None:
    with pytest.raises(ValueError, match="positive whole number"):
        await ledger.hold(OLD_USER, amount, "bad")  # type: ignore[arg-type]


async def test_unknown_hold(ledger: Ledger) -> None:
    with pytest.raises(UnknownHold):
        await ledger.capture(999)
    with pytest.raises(UnknownHold):
        await ledger.hold_status(999)


async def test_grant_and_revoke(ledger: Ledger) -> None:
    assert await ledger.grant(OLD_USER, 25, 7, "contest prize", "prize:1") == 25
    assert await ledger.grant(OLD_USER, 25, 7, "contest prize", "prize:1") == 25
    await ledger.hold(OLD_USER, 20, "job:1")
    # Only what is available can be revoked; the hold stays intact.
    assert await ledger.revoke(OLD_USER, 100, 7, "abuse", "abuse:1") == 5
    assert await ledger.revoke(OLD_USER, 100, 7, "abuse", "abuse:1") == 5
    assert await ledger.revoke(OLD_USER, 100, 7, "abuse", "abuse:2") == 0
    assert await ledger.balance(OLD_USER) == 0
    assert await ledger.pending_holds(OLD_USER) == 20
    entries = await ledger.history(OLD_USER)
    assert [(e.kind, e.amount, e.reason, e.actor) for e in entries] == [
        ("revoke", -5, "abuse", 7), ("hold", -20, None, None), ("grant", 25, "contest prize", 7)]


async def test_expired_holds_are_released_by_the_sweep(ledger: Ledger, clock: FakeClock) -> None:
    await ledger.touch(OLD_USER)
    stale = await ledger.hold(OLD_USER, 10, "job:stale")
    clock.advance(timedelta(minutes=30))
    fresh = await ledger.hold(OLD_USER, 10, "job:fresh")
    clock.advance(timedelta(minutes=31))
    assert await ledger.audit() == []  # expired and unresolved is a state, not a fault
    assert await ledger.hold_status(stale) == "expired"
    assert await ledger.release_expired() == 1
    assert await ledger.release_expired() == 0
    assert await ledger.hold_status(stale) == "expired"
    assert await ledger.hold_status(fresh) == "pending"
    assert (await ledger.history(OLD_USER, 1))[0].reason == "expired"
    assert await ledger.balance(OLD_USER) == 290


async def test_the_sweep_leaves_the_holds_it_is_told_to_keep(ledger: Ledger,
                                                              clock: FakeClock) -> None:
    await ledger.touch(OLD_USER)
    kept = await ledger.hold(OLD_USER, 10, "job:running")
    lost = await ledger.hold(OLD_USER, 20, "job:lost")
    clock.advance(timedelta(hours=1))
    seen: list[HoldInfo] = []

    def keep(hold: HoldInfo) -> bool:
        seen.append(hold)
        return hold.key == "job:running"

    assert await ledger.release_expired(keep) == 1
    assert [(hold.id, hold.status) for hold in seen] == [(kept, "expired"), (lost, "expired")]
    assert await ledger.hold_status(lost) == "expired"
    assert await ledger.pending_holds(OLD_USER) == 10
    assert await ledger.release_expired() == 1
    assert await ledger.balance(OLD_USER) == 300


async def test_an_expired_hold_cannot_be_captured(ledger: Ledger, clock: FakeClock) -> None:
    await ledger.touch(OLD_USER)
    hold_id = await ledger.hold(OLD_USER, 10, "job:slow")
    clock.advance(timedelta(hours=1) - timedelta(microseconds=1))
    assert await ledger.hold_status(hold_id) == "pending"
    clock.advance(timedelta(microseconds=1))
    assert await ledger.hold_status(hold_id) == "expired"
    assert await ledger.capture(hold_id) is False  # released as expired, in this call
    assert await ledger.hold_status(hold_id) == "expired"
    assert await ledger.capture(hold_id) is False
    assert await ledger.release(hold_id) is False
    assert await ledger.balance(OLD_USER) == 300
    assert await ledger.pending_holds(OLD_USER) == 0
    assert [(entry.kind, entry.reason) for entry in await ledger.history(OLD_USER, 1)] == [
        ("release", "expired")]
    assert await ledger.release_expired() == 0


async def test_an_expired_hold_released_by_its_owner_counts_as_released(
        ledger: Ledger, clock: FakeClock) -> None:
    await ledger.touch(OLD_USER)
    hold_id = await ledger.hold(OLD_USER, 10, "job:failed")
    clock.advance(timedelta(hours=2))
    assert await ledger.release(hold_id, "job failed") is True
    assert await ledger.hold_status(hold_id) == "released"
    assert await ledger.balance(OLD_USER) == 300


async def test_hold_info(ledger: Ledger, clock: FakeClock) -> None:
    await ledger.touch(OLD_USER)
    made = clock.time
    hold_id = await ledger.hold(OLD_USER, 12, "job:info")
    assert await ledger.hold_info(hold_id) == HoldInfo(
        id=hold_id, user_id=OLD_USER, amount=12, key="job:info", created_at=made,
        expires_at=made + timedelta(hours=1), status="pending")
    await ledger.capture(hold_id)
    info = await ledger.hold_info(hold_id)
    assert info is not None and info.status == "captured"
    assert await ledger.hold_info(hold_id + 1000) is None


async def test_unresolved_holds_created_before_a_cutoff(ledger: Ledger, clock: FakeClock) -> None:
    await ledger.touch(OLD_USER)
    await ledger.touch(OLD_USER + 1)
    captured = await ledger.hold(OLD_USER, 1, "job:done")
    await ledger.capture(captured)
    old = await ledger.hold(OLD_USER, 2, "job:old")
    other = await ledger.hold(OLD_USER + 1, 3, "job:other")
    clock.advance(timedelta(hours=2))
    cutoff = clock.time
    await ledger.hold(OLD_USER, 4, "job:new")
    found = await ledger.unresolved_holds(created_before=cutoff)
    assert [(hold.id, hold.key, hold.status) for hold in found] == [
        (old, "job:old", "expired"), (other, "job:other", "expired")]
    assert await ledger.unresolved_holds(created_before=found[0].created_at) == []
    for hold in found:
        assert await ledger.release(hold.id, "orphaned") is True
    assert await ledger.unresolved_holds(created_before=clock.time + timedelta(seconds=1)) != []
    assert await ledger.unresolved_holds(created_before=cutoff) == []


async def make_probe_table(ledger: Ledger) -> None:
    """A table of the caller's own, written in the same transaction as a hold."""
    async with ledger.database.begin() as conn:
        await conn.execute(text("CREATE TABLE probe_jobs (key VARCHAR(200) PRIMARY KEY)"))


async def probe_keys(ledger: Ledger) -> list[str]:
    async with ledger.database.connect() as conn:
        return list(await conn.scalars(text("SELECT key FROM probe_jobs ORDER BY key")))


async def test_a_hold_joins_the_callers_transaction(ledger: Ledger) -> None:
    await make_probe_table(ledger)
    await ledger.touch(OLD_USER)
    async with ledger.transaction() as conn:
        hold_id = await ledger.hold(OLD_USER, 10, "job:joined", connection=conn)
        assert await ledger.hold(OLD_USER, 10, "job:joined", connection=conn) == hold_id
        await conn.execute(text("INSERT INTO probe_jobs VALUES ('job:joined')"))
    assert await probe_keys(ledger) == ["job:joined"]
    assert await ledger.hold_info(hold_id) == HoldInfo(
        id=hold_id, user_id=OLD_USER, amount=10, key="job:joined", created_at=ledger.now(),
        expires_at=ledger.now() + timedelta(hours=1), status="pending")
    assert await ledger.hold(OLD_USER, 10, "job:joined") == hold_id
    assert await ledger.balance(OLD_USER) == 290
    assert await ledger.capture(hold_id) is True


async def test_a_failed_transaction_takes_its_hold_with_it(ledger: Ledger) -> None:
    await make_probe_table(ledger)
    await ledger.touch(OLD_USER)
    with pytest.raises(RuntimeError, match="crash"):
        async with ledger.transaction() as conn:
            hold_id = await ledger.hold(OLD_USER, 10, "job:doomed", connection=conn)
            await conn.execute(text("INSERT INTO probe_jobs VALUES ('job:doomed')"))
            raise RuntimeError("crash before commit")
    assert await probe_keys(ledger) == []
    assert await ledger.hold_info(hold_id) is None
    assert await ledger.balance(OLD_USER) == 300
    assert await ledger.unresolved_holds(created_before=ledger.now() + timedelta(days=1)) == []
    # The key was never used, so it is free for a different hold.
    again = await ledger.hold_info(await ledger.hold(OLD_USER, 20, "job:doomed"))
    assert again is not None and (again.amount, again.status) == (20, "pending")
    assert await ledger.balance(OLD_USER) == 280


async def test_a_second_write_inside_a_transaction_raises(ledger: Ledger) -> None:
    """It would wait for the transaction (on SQLite the lock, on PostgreSQL the user's row),
    which waits for it."""
    await ledger.touch(OLD_USER)
    async with ledger.transaction() as conn:
        hold_id = await ledger.hold(OLD_USER, 10, "job:inside", connection=conn)
        with pytest.raises(RuntimeError, match="would wait for the block"):
            async with asyncio.timeout(5):
                await ledger.touch(OLD_USER)
    assert await ledger.hold_status(hold_id) == "pending"


@pytest.mark.parametrize(("amount", "key", "error"), [
    (301, "job:big", InsufficientCredits), (5, "job:taken", KeyReused)])
async def test_a_refused_joined_hold_rolls_the_transaction_back(
        ledger: Ledger, amount: int, key: str, error: type[Exception]) -> None:
    await make_probe_table(ledger)
    await ledger.touch(OLD_USER)
    taken = await ledger.hold(OLD_USER, 1, "job:taken")
    with pytest.raises(error):
        async with ledger.transaction() as conn:
            await conn.execute(text("INSERT INTO probe_jobs VALUES ('job:refused')"))
            await ledger.hold(OLD_USER, amount, key, connection=conn)
    assert await probe_keys(ledger) == []
    assert await ledger.balance(OLD_USER) == 299
    assert await ledger.pending_holds(OLD_USER) == 1
    assert await ledger.hold_status(taken) == "pending"


async def test_pending_holds_survive_a_restart(ledger_url: str, clock: FakeClock) -> None:
    ledger = await Ledger.connect(ledger_url, clock)
    await ledger.touch(OLD_USER)
    hold_id = await ledger.hold(OLD_USER, 70, "job:1")
    await ledger.close()
    ledger = await Ledger.connect(ledger_url, clock)
    try:
        assert await ledger.pending_holds(OLD_USER) == 70
        assert await ledger.release(hold_id) is True
        assert await ledger.balance(OLD_USER) == 300
    finally:
        await ledger.close()


async def test_database_refuses_a_second_resolution(ledger: Ledger) -> None:
    await ledger.touch(OLD_USER)
    hold_id = await ledger.hold(OLD_USER, 10, "job:1")
    await ledger.capture(hold_id)
    with pytest.raises(IntegrityError, match="pending_id"):
        async with ledger.database.begin() as conn:
            await conn.execute(insert(Transfer).values(
                key="sneaky", kind="release", user_id=OLD_USER, debit_account="x",
                credit_account="y", amount=10, pending_id=hold_id, created_at=ledger.now()))


async def test_the_database_moves_balances_with_each_transfer(ledger: Ledger) -> None:
    """Migration 0004's trigger: no code path can insert a transfer and forget its balance."""
    await ledger.touch(OLD_USER)
    async with ledger.database.begin() as conn:
        await conn.execute(insert(Transfer).values(
            key="direct", kind="grant", user_id=OLD_USER, debit_account="system:admin",
            credit_account=f"user:{OLD_USER}", amount=7, created_at=ledger.now()))
    assert await ledger.balance(OLD_USER) == 307  # and the fixture's audit() finds nothing


async def test_database_refuses_negative_available(ledger: Ledger) -> None:
    await ledger.touch(OLD_USER)
    with pytest.raises(IntegrityError, match="available"):
        async with ledger.database.begin() as conn:
            await conn.execute(text("UPDATE ledger_users SET available = -1, posted = -1"))


async def test_transfers_are_append_only(ledger: Ledger) -> None:
    await ledger.touch(OLD_USER)
    for statement in ("UPDATE ledger_transfers SET amount = 1", "DELETE FROM ledger_transfers"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with ledger.database.begin() as conn:
                await conn.execute(text(statement))


async def test_audit_reports_a_tampered_balance(ledger: Ledger) -> None:
    await ledger.touch(OLD_USER)
    async with ledger.database.begin() as conn:
        await conn.execute(text("UPDATE ledger_users SET posted = posted + 5, "
                                "available = available + 5"))
    [problem] = await ledger.audit()
    assert f"user {OLD_USER}" in problem and "305" in problem and "300" in problem
    async with ledger.database.begin() as conn:
        await conn.execute(text("UPDATE ledger_users SET posted = posted - 5, "
                                "available = available - 5"))


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception),
                                             ("", pytest.skip.Exception)])
def test_missing_postgres_fails_only_on_ci(monkeypatch: pytest.MonkeyPatch, ci: str,
                                           outcome: type[BaseException]) -> None:
    monkeypatch.delenv("IMAGINEBOT_TEST_POSTGRES_URL", raising=False)
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr("tests.support.ledger._start_cluster", lambda: None)
    with pytest.raises(outcome, match="PostgreSQL tests cannot run"):
        postgres_server_url()
