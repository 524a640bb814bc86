"""The real ledger, on a file SQLite database and on PostgreSQL, run against a plain Python
model of it.

Hypothesis picks sequences of touches, clock jumps, sweeps (some holds kept), holds (alone or
in a transaction of the caller's, committed or abandoned), captures (refused once a hold has
expired), releases, grants, revokes, amounts over the limit (refused, changing nothing),
replayed keys and crashes (close and reconnect); after
every step the balances, hold statuses and unresolved holds must match the model, and audit()
must find nothing but the expired holds no sweep has released yet.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, insert, select

from bot.ledger import (
    MAX_AMOUNT,
    AmountTooLarge,
    HoldInfo,
    InsufficientCredits,
    KeyReused,
    Ledger,
    snowflake_created_at,
)
from bot.ledger.service import DISCORD_EPOCH_MS
from tests.support.ledger import FakeClock, fresh_postgres_database, postgres_server_url

# Slow: hypothesis runs 30 ledgers of up to 30 steps each, on each database.
pytestmark = pytest.mark.slow

T = TypeVar("T")
SIGNUP, DAILY = 200, 100
MIN_AGE = timedelta(days=1)
HOLD_TTL = timedelta(hours=8)
START = FakeClock().time
OLD_USER = 175928847299117063
# An account made an hour before the test starts: no signup bonus until a day has passed.
YOUNG_USER = (int((START - timedelta(hours=1)).timestamp() * 1000) - DISCORD_EPOCH_MS) << 22
USERS = st.sampled_from([OLD_USER, YOUNG_USER])
KEYS = st.sampled_from([f"key:{n}" for n in range(6)])
AMOUNTS = st.integers(min_value=1, max_value=250)
# Few hold amounts and their own keys (one shared with grants and revokes), so that most holds
# succeed, some are replayed with the same terms, and captures and expiries get explored.
HOLD_AMOUNTS = st.sampled_from([1, 7, 30, 90])
HOLD_KEYS = st.sampled_from([f"job:{n}" for n in range(8)] + ["key:0"])


@dataclass
class ModelUser:
    posted: int = 0
    holds: dict[int, int] = field(default_factory=dict)  # pending hold id -> amount

    @property
    def available(self) -> int:
        return self.posted - sum(self.holds.values())


@dataclass
class ModelHold:
    user: int
    amount: int
    key: str
    expires: datetime
    status: str = "pending"  # until resolved: "captured", "released" or "expired"


class Abandoned(Exception):
    """The caller's transaction failed after its hold was written."""


# The caller's own rows, written in the same transaction as their hold (the bot's job rows).
probe_jobs = Table("probe_jobs", MetaData(), Column("id", Integer, primary_key=True),
                   Column("hold_id", BigInteger, nullable=False))


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")
    dialect = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = Path(tempfile.mkdtemp(prefix="ledger-sm-"))
        self.url = (self.run(fresh_postgres_database()) if self.dialect == "postgresql"
                    else f"sqlite+aiosqlite:///{self.directory / 'ledger.db'}")
        self.clock = FakeClock()
        self.ledger = self.run(self.connect())
        self.users: dict[int, ModelUser] = {}
        self.granted: set[str] = set()  # signup/daily keys the model has paid out
        self.keys: dict[str, tuple[str, int, int]] = {}  # key -> (kind, user, amount)
        self.model_holds: dict[int, ModelHold] = {}
        self.jobs: list[int] = []  # hold ids of the caller's rows committed with their hold
        self.run(self.make_jobs_table())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def connect(self) -> Ledger:
        return await Ledger.connect(self.url, self.clock, signup_credits=SIGNUP,
                                    daily_credits=DAILY, min_account_age=MIN_AGE,
                                    hold_ttl=HOLD_TTL)

    async def make_jobs_table(self) -> None:
        async with self.ledger.database.begin() as conn:
            await conn.run_sync(probe_jobs.create)

    def teardown(self) -> None:
        self.run(self.ledger.close())
        self.loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def user(self, user_id: int) -> ModelUser:
        return self.users.setdefault(user_id, ModelUser())

    def expired(self, hold: ModelHold) -> bool:
        return hold.status == "pending" and hold.expires <= self.clock.time

    def status(self, hold: ModelHold) -> str:
        return "expired" if self.expired(hold) else hold.status

    def resolve(self, hold_id: int, status: str) -> bool:
        hold = self.model_holds[hold_id]
        if hold.status != "pending":
            return False
        hold.status = status
        amount = self.users[hold.user].holds.pop(hold_id)
        if status == "captured":
            self.users[hold.user].posted -= amount
        return True

    @initialize(user_id=USERS)
    def first_touch(self, user_id: int) -> None:
        self.touch(user_id)

    @rule(user_id=USERS)
    def touch(self, user_id: int) -> None:
        user = self.user(user_id)
        now = self.clock.time
        age = now - snowflake_created_at(user_id)
        due = [f"daily:{user_id}:{now:%Y-%m-%d}"]
        if age >= MIN_AGE:
            due.append(f"signup:{user_id}")
        for key in due:
            if key not in self.granted:
                self.granted.add(key)
                user.posted += DAILY if key.startswith("daily") else SIGNUP
        assert self.run(self.ledger.touch(user_id)) == user.available

    @rule(hours=st.integers(min_value=1, max_value=30))
    def advance_clock(self, hours: int) -> None:
        self.clock.advance(timedelta(hours=hours))

    @rule(kept=st.sets(KEYS, max_size=3))
    def sweep(self, kept: set[str]) -> None:
        expired = sorted(hold_id for hold_id, hold in self.model_holds.items()
                         if self.expired(hold))
        offered: list[int] = []

        def keep(hold: HoldInfo) -> bool:
            offered.append(hold.id)
            assert hold.status == "expired"
            return hold.key in kept

        released = [hold_id for hold_id in expired if self.model_holds[hold_id].key not in kept]
        assert self.run(self.ledger.release_expired(keep)) == len(released)
        assert sorted(offered) == expired
        for hold_id in released:
            self.resolve(hold_id, "expired")

    def place_hold(self, user_id: int, amount: int, key: str, place: Callable[[], int], *,
                   commit: bool = True) -> int | None:
        """Check one hold attempt against the model; the hold's id, or None if none was made."""
        known = self.keys.get(key)
        if known is not None and known != ("hold", user_id, amount):
            with pytest.raises(KeyReused):
                place()
            return None
        available = self.user(user_id).available
        if known is None and amount > available:
            with pytest.raises(InsufficientCredits) as raised:
                place()
            assert (raised.value.available, raised.value.needed) == (available, amount)
            return None
        if not commit:
            with pytest.raises(Abandoned):
                place()
            return None
        hold_id = place()
        if known is None:
            self.keys[key] = ("hold", user_id, amount)
            self.model_holds[hold_id] = ModelHold(user_id, amount, key,
                                                  self.clock.time + HOLD_TTL)
            self.user(user_id).holds[hold_id] = amount
        assert hold_id in self.model_holds
        return hold_id

    @rule(target=holds, user_id=USERS, amount=HOLD_AMOUNTS, key=HOLD_KEYS)
    def hold(self, user_id: int, amount: int, key: str) -> MultipleResults[int]:
        return multiple(*filter(None, [self.place_hold(
            user_id, amount, key, lambda: self.run(self.ledger.hold(user_id, amount, key)))]))

    @rule(target=holds, user_id=USERS, amount=HOLD_AMOUNTS, key=HOLD_KEYS, commit=st.booleans())
    def hold_with_a_job(self, user_id: int, amount: int, key: str,
                        commit: bool) -> MultipleResults[int]:
        """The bot's enqueue: the hold and the job row commit together or not at all."""

        async def enqueue() -> int:
            async with self.ledger.transaction() as conn:
                hold_id = await self.ledger.hold(user_id, amount, key, connection=conn)
                await conn.execute(insert(probe_jobs).values(hold_id=hold_id))
                if not commit:
                    raise Abandoned
            return hold_id

        hold_id = self.place_hold(user_id, amount, key, lambda: self.run(enqueue()),
                                  commit=commit)
        if hold_id is None:
            return multiple()
        self.jobs.append(hold_id)
        return multiple(hold_id)

    @rule(hold_id=holds)
    def capture(self, hold_id: int) -> None:
        if self.expired(self.model_holds[hold_id]):
            # Refused, and released as expired in the same call.
            assert self.run(self.ledger.capture(hold_id)) is False
            self.resolve(hold_id, "expired")
        else:
            assert self.run(self.ledger.capture(hold_id)) == self.resolve(hold_id, "captured")

    @rule(hold_id=holds)
    def capture_at_expiry(self, hold_id: int) -> None:
        """A job that outlived its hold: the clock reaches the very instant of expiry."""
        self.clock.time = max(self.clock.time, self.model_holds[hold_id].expires)
        self.capture(hold_id)

    @rule(hold_id=holds)
    def release(self, hold_id: int) -> None:
        assert self.run(self.ledger.release(hold_id)) == self.resolve(hold_id, "released")

    @rule(user_id=USERS, amount=AMOUNTS, key=KEYS)
    def grant(self, user_id: int, amount: int, key: str) -> None:
        known = self.keys.get(key)
        if known is not None and known != ("grant", user_id, amount):
            with pytest.raises(KeyReused):
                self.run(self.ledger.grant(user_id, amount, 1, "model", key))
            return
        if known is None:
            self.keys[key] = ("grant", user_id, amount)
            self.user(user_id).posted += amount
        assert self.run(self.ledger.grant(user_id, amount, 1, "model", key)) == \
            self.user(user_id).available

    @rule(user_id=USERS, amount=AMOUNTS, key=KEYS)
    def revoke(self, user_id: int, amount: int, key: str) -> None:
        known = self.keys.get(key)
        if known is not None:
            if known[:2] != ("revoke", user_id):
                with pytest.raises(KeyReused):
                    self.run(self.ledger.revoke(user_id, amount, 1, "model", key))
                return
            assert self.run(self.ledger.revoke(user_id, amount, 1, "model", key)) == known[2]
            return
        taken = min(amount, self.user(user_id).available) if user_id in self.users else 0
        if taken:
            self.keys[key] = ("revoke", user_id, taken)
            self.users[user_id].posted -= taken
        assert self.run(self.ledger.revoke(user_id, amount, 1, "model", key)) == taken

    @rule(user_id=USERS, amount=st.integers(min_value=MAX_AMOUNT + 1, max_value=2**64),
          key=KEYS | HOLD_KEYS, action=st.sampled_from(["grant", "revoke", "hold"]))
    def over_the_limit(self, user_id: int, amount: int, key: str, action: str) -> None:
        """Refused before anything is written, whatever the key; the invariant checks that
        nothing changed."""
        with pytest.raises(AmountTooLarge):
            if action == "hold":
                self.run(self.ledger.hold(user_id, amount, key))
            else:
                self.run(getattr(self.ledger, action)(user_id, amount, 1, "model", key))

    @rule()
    def crash_and_reconnect(self) -> None:
        self.run(self.ledger.close())
        self.ledger = self.run(self.connect())

    @invariant()
    def matches_model_and_audits_clean(self) -> None:
        assert self.run(self.ledger.audit()) == []
        for user_id, user in self.users.items():
            assert self.run(self.ledger.balance(user_id)) == user.available
            assert self.run(self.ledger.pending_holds(user_id)) == sum(user.holds.values())
        for hold_id, hold in self.model_holds.items():
            assert self.run(self.ledger.hold_status(hold_id)) == self.status(hold)
        unresolved = self.run(self.ledger.unresolved_holds(
            created_before=self.clock.time + timedelta(microseconds=1)))
        assert [(hold.id, hold.status) for hold in unresolved] == [
            (hold_id, self.status(hold)) for hold_id, hold in sorted(self.model_holds.items())
            if hold.status == "pending"]
        assert self.run(self.job_holds()) == self.jobs

    async def job_holds(self) -> list[int]:
        async with self.ledger.database.connect() as conn:
            return list(await conn.scalars(select(probe_jobs.c.hold_id)
                                           .order_by(probe_jobs.c.id)))


class PostgresLedgerMachine(LedgerMachine):
    dialect = "postgresql"


@pytest.mark.parametrize("machine", [LedgerMachine, PostgresLedgerMachine],
                         ids=lambda machine: machine.dialect)
def test_ledger_state_machine(machine: type[LedgerMachine]) -> None:
    if machine.dialect == "postgresql":
        postgres_server_url()  # skips (or fails on CI) without PostgreSQL
    run_state_machine_as_test(machine, settings=settings(
        max_examples=30, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
