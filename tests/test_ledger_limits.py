"""The ledger's limits, on SQLite and PostgreSQL: one transfer moves at most MAX_AMOUNT and a
balance holds at most MAX_BALANCE, refused by the code (OverLimit) and by the database (CHECK
constraints), so no sum overflows a 64-bit integer; and migration 0005 repairs what the
overflow left behind before the constraints apply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import insert, inspect, text
from sqlalchemy.exc import DBAPIError

from bot.database import create_database, downgrade, upgrade
from bot.ledger import (
    MAX_AMOUNT,
    MAX_BALANCE,
    AmountTooLarge,
    BalanceTooLarge,
    Ledger,
)
from bot.ledger.models import Transfer
from tests.support.ledger import FakeClock

USER = 175928847299117063
OTHER = 175928847299117064
DAILY = 100
INT64_MAX = 2**63 - 1


@pytest.fixture
async def ledger(ledger_url: str, clock: FakeClock) -> AsyncIterator[Ledger]:
    opened = await Ledger.connect(ledger_url, clock, signup_credits=0, daily_credits=DAILY,
                                  hold_ttl=timedelta(hours=1))
    yield opened
    assert await opened.audit() == []
    await opened.close()


async def fill_to(ledger: Ledger, user_id: int, balance: int) -> None:
    """Grants of MAX_AMOUNT (and one remainder) in one transaction, as a thousand admin grants
    would, up to ``balance``."""
    amounts = [MAX_AMOUNT] * (balance // MAX_AMOUNT) + (
        [balance % MAX_AMOUNT] if balance % MAX_AMOUNT else [])
    async with ledger.transaction() as conn:
        await conn.execute(insert(Transfer), [
            {"key": f"fill:{user_id}:{n}", "kind": "grant", "user_id": user_id,
             "debit_account": "system:admin", "credit_account": f"user:{user_id}",
             "amount": amount, "created_at": ledger.now()}
            for n, amount in enumerate(amounts)])


async def test_one_transfer_moves_at_most_max_amount(ledger: Ledger) -> None:
    await ledger.touch(USER)
    assert await ledger.grant(USER, MAX_AMOUNT, 1, "the most", "grant:max") == \
        DAILY + MAX_AMOUNT
    for amount in (MAX_AMOUNT + 1, INT64_MAX, 2**63, 2**64):
        with pytest.raises(AmountTooLarge, match=f"at most {MAX_AMOUNT} credits, not {amount}"):
            await ledger.grant(USER, amount, 1, "too much", f"grant:{amount}")
        with pytest.raises(AmountTooLarge):
            await ledger.revoke(USER, amount, 1, "too much", f"revoke:{amount}")
        with pytest.raises(AmountTooLarge):
            await ledger.hold(USER, amount, f"hold:{amount}")
    assert await ledger.balance(USER) == DAILY + MAX_AMOUNT
    assert len(await ledger.history(USER)) == 2


async def test_a_balance_holds_at_most_max_balance(ledger: Ledger, clock: FakeClock) -> None:
    await ledger.touch(USER)
    await fill_to(ledger, USER, MAX_BALANCE - DAILY)
    assert await ledger.balance(USER) == MAX_BALANCE
    with pytest.raises(BalanceTooLarge, match=f"balance over {MAX_BALANCE} credits"):
        await ledger.grant(USER, 1, 1, "one more", "grant:one")
    assert await ledger.balance(USER) == MAX_BALANCE

    # Tomorrow's allowance finds no room: it is skipped, and touching still works.
    clock.time = ledger.next_daily_at()
    assert await ledger.touch(USER) == MAX_BALANCE
    # Spending makes room, and the allowance still due arrives with the next touch.
    hold = await ledger.hold(USER, 500, "job:1")
    assert await ledger.capture(hold)
    assert await ledger.touch(USER) == MAX_BALANCE - 500 + DAILY
    assert await ledger.touch(USER) == MAX_BALANCE - 500 + DAILY  # once
    # A replayed grant is still a replay at the limit, not a refusal.
    assert await ledger.grant(USER, 400, 1, "top up", "grant:400") == MAX_BALANCE
    assert await ledger.grant(USER, 400, 1, "top up", "grant:400") == MAX_BALANCE
    with pytest.raises(BalanceTooLarge):
        await ledger.grant(USER, 1, 1, "one more", "grant:one")


async def test_the_database_refuses_what_the_code_refuses(ledger: Ledger) -> None:
    """Constraints ck_ledger_transfers_amount_capped and ck_ledger_users_posted_capped."""
    await ledger.touch(USER)
    row = {"kind": "grant", "user_id": USER, "debit_account": "system:admin",
           "credit_account": f"user:{USER}", "created_at": ledger.now()}
    with pytest.raises(DBAPIError, match="amount_capped"):
        async with ledger.transaction() as conn:
            await conn.execute(insert(Transfer).values(key="raw:1", amount=MAX_AMOUNT + 1,
                                                       **row))
    await fill_to(ledger, USER, MAX_BALANCE - DAILY)
    with pytest.raises(DBAPIError, match="posted_capped"):
        async with ledger.transaction() as conn:
            await conn.execute(insert(Transfer).values(key="raw:2", amount=1, **row))
    assert await ledger.balance(USER) == MAX_BALANCE


# -- migration 0005 -----------------------------------------------------------------------------

async def run_sql(ledger_url: str, *statements: str) -> None:
    database = create_database(ledger_url)
    try:
        async with database.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await database.dispose()


async def scalar(ledger_url: str, statement: str) -> object:
    database = create_database(ledger_url)
    try:
        async with database.connect() as conn:
            return await conn.scalar(text(statement))
    finally:
        await database.dispose()


def transfer_sql(id_: int, key: str, kind: str, user_id: int, amount: int, *,
                 pending_id: int | None = None, expires: bool = False) -> str:
    """A transfer as the ledger wrote it at revision 0004 (its trigger moves the balances)."""
    spends = kind in ("hold", "capture", "release")
    debit, credit = ("user:{}", "system:spend") if spends else ("system:admin", "user:{}")
    expires_at = "'2026-03-01 18:00:00'" if expires else "NULL"
    return ('INSERT INTO ledger_transfers (id, "key", kind, user_id, debit_account, '
            "credit_account, amount, pending_id, reason, created_at, expires_at) VALUES "
            f"({id_}, '{key}', '{kind}', {user_id}, '{debit.format(user_id)}', "
            f"'{credit.format(user_id)}', {amount}, {'NULL' if pending_id is None else pending_id},"
            f" 'old reason', '2026-03-01 12:00:00', {expires_at})")


async def test_the_migration_repairs_an_overflowed_ledger_and_keeps_the_rest(
        ledger_url: str, clock: FakeClock) -> None:
    """The issue's state: a grant of 2^63-1 (on SQLite a daily grant then made the balance a
    REAL; PostgreSQL refused it), next to a healthy user with resolved and pending holds and a
    job row. After the upgrade the huge grant is cut to MAX_AMOUNT, the balance is derived
    again, everything else is as it was, and the database's own rules still hold."""
    database = create_database(ledger_url)
    try:
        await upgrade(database, "0004_ledger_balance_triggers")
    finally:
        await database.dispose()
    statements = [
        f"INSERT INTO ledger_users VALUES ({user}, '2026-03-01 12:00:00', 0, 0, 0)"
        for user in (USER, OTHER)]
    statements += [
        transfer_sql(1, "admin:huge", "grant", USER, INT64_MAX),
        transfer_sql(2, "signup:other", "signup", OTHER, 200),
        transfer_sql(3, "gen:1", "hold", OTHER, 30, expires=True),
        transfer_sql(4, "resolve:3", "capture", OTHER, 30, pending_id=3),
        transfer_sql(5, "gen:2", "hold", OTHER, 7, expires=True),
        "INSERT INTO jobs (id, request_key, state, kind, action, owner_id, params, hold_id, "
        "cost, application_id, interaction_id, channel_id, upload_limit, created_at, "
        "attempts, delivered_free) VALUES ('j1', 'gen:2', 'queued', 'imagine', 'gen', "
        f"{OTHER}, '{{}}', 5, 7, 1, 2, 3, 8000000, '2026-03-01 12:00:00', 0, false)",
    ]
    if ledger_url.startswith("sqlite"):
        statements.append(transfer_sql(6, f"daily:{USER}:2026-03-01", "daily", USER, DAILY))
    else:  # the ids above were given, not drawn
        statements.append("SELECT setval('ledger_transfers_id_seq', 5)")
    await run_sql(ledger_url, *statements)
    if ledger_url.startswith("sqlite"):  # the overflow
        assert await scalar(ledger_url, "SELECT typeof(posted) FROM ledger_users "
                                 f"WHERE user_id = {USER}") == "real"

    ledger = await Ledger.connect(ledger_url, clock, signup_credits=0, daily_credits=0)
    try:
        huge = MAX_AMOUNT + (DAILY if ledger_url.startswith("sqlite") else 0)
        assert await ledger.balance(USER) == huge
        history = await ledger.history(USER)
        assert history[-1].amount == MAX_AMOUNT
        assert history[-1].reason == (f"old reason (cut from {INT64_MAX} to the limit of "
                                      f"{MAX_AMOUNT} by migration 0005)")
        assert (await ledger.balance(OTHER), await ledger.pending_holds(OTHER)) == (163, 7)
        assert await ledger.hold_status(3) == "captured"
        assert await ledger.audit() == []
        # The triggers are back: balances move, and transfers stay append-only.
        assert await ledger.grant(OTHER, 5, 1, "after", "after:1") == 168
        assert await ledger.capture(5)
        assert (await ledger.balance(OTHER), await ledger.pending_holds(OTHER)) == (168, 0)
        with pytest.raises(DBAPIError, match="append-only"):
            async with ledger.transaction() as conn:
                await conn.execute(text("UPDATE ledger_transfers SET amount = 1"))
        async with ledger.database.connect() as conn:
            assert (await conn.execute(text("SELECT id, hold_id FROM jobs"))).all() == \
                [("j1", 5)]
            if ledger_url.startswith("sqlite"):
                assert (await conn.execute(text("PRAGMA foreign_key_check"))).all() == []
                assert (await conn.execute(text(
                    "SELECT typeof(posted) FROM ledger_users"))).scalars().all() == \
                    ["integer", "integer"]
    finally:
        await ledger.close()

    # Down and up again with these rows: the limits go and come back, the rows stay.
    database = create_database(ledger_url)
    try:
        await downgrade(database, "0004_ledger_balance_triggers")
        async with database.connect() as conn:
            assert "ck_ledger_users_posted_capped" not in {
                check["name"] for check in await conn.run_sync(
                    lambda sync: inspect(sync).get_check_constraints("ledger_users"))}
    finally:
        await database.dispose()
    ledger = await Ledger.connect(ledger_url, clock, signup_credits=0, daily_credits=0)
    try:
        assert (await ledger.balance(OTHER), await ledger.balance(USER)) == (168, huge)
        assert await ledger.audit() == []
        assert await ledger.grant(OTHER, 2, 1, "again", "after:2") == 170
    finally:
        await ledger.close()
