"""The real ledger on a file SQLite database, run against a plain Python model of it.

Hypothesis picks sequences of touches, clock jumps, holds, captures, releases, grants,
revokes, replayed keys and crashes (close and reconnect); after every step the balances must
match the model and audit() must find nothing.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from bot.ledger import InsufficientCredits, KeyReused, Ledger, snowflake_created_at
from bot.ledger.service import DISCORD_EPOCH_MS
from tests.support.ledger import FakeClock

# Slow: hypothesis runs 20 ledgers of 25 steps each.
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
    expires: datetime
    status: str = "pending"


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = Path(tempfile.mkdtemp(prefix="ledger-sm-"))
        self.clock = FakeClock()
        self.ledger = self.run(self.connect())
        self.users: dict[int, ModelUser] = {}
        self.granted: set[str] = set()  # signup/daily keys the model has paid out
        self.keys: dict[str, tuple[str, int, int]] = {}  # key -> (kind, user, amount)
        self.model_holds: dict[int, ModelHold] = {}

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def connect(self) -> Ledger:
        return await Ledger.connect(f"sqlite+aiosqlite:///{self.directory / 'ledger.db'}",
                                    self.clock, signup_credits=SIGNUP, daily_credits=DAILY,
                                    min_account_age=MIN_AGE, hold_ttl=HOLD_TTL)

    def teardown(self) -> None:
        self.run(self.ledger.close())
        self.loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def user(self, user_id: int) -> ModelUser:
        return self.users.setdefault(user_id, ModelUser())

    def resolve(self, hold_id: int, status: str) -> bool:
        hold = self.model_holds[hold_id]
        if hold.status != "pending":
            return False
        hold.status = status
        amount = self.users[hold.user].holds.pop(hold_id)
        if status == "captured":
            self.users[hold.user].posted -= amount
        return True

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
    def advance_clock_and_sweep(self, hours: int) -> None:
        self.clock.advance(timedelta(hours=hours))
        expired = [hold_id for hold_id, hold in self.model_holds.items()
                   if hold.status == "pending" and hold.expires <= self.clock.time]
        for hold_id in expired:
            self.resolve(hold_id, "released")
        assert self.run(self.ledger.release_expired()) == len(expired)

    @rule(target=holds, user_id=USERS, amount=AMOUNTS, key=KEYS)
    def hold(self, user_id: int, amount: int, key: str) -> int:
        known = self.keys.get(key)
        if known is not None and known != ("hold", user_id, amount):
            with pytest.raises(KeyReused):
                self.run(self.ledger.hold(user_id, amount, key))
            return -1
        available = self.user(user_id).available
        if known is None and amount > available:
            with pytest.raises(InsufficientCredits) as raised:
                self.run(self.ledger.hold(user_id, amount, key))
            assert (raised.value.available, raised.value.needed) == (available, amount)
            return -1
        hold_id = self.run(self.ledger.hold(user_id, amount, key))
        if known is None:
            self.keys[key] = ("hold", user_id, amount)
            self.model_holds[hold_id] = ModelHold(user_id, amount,
                                                  self.clock.time + HOLD_TTL)
            self.user(user_id).holds[hold_id] = amount
        assert hold_id in self.model_holds
        return hold_id

    @rule(hold_id=holds)
    def capture(self, hold_id: int) -> None:
        if hold_id in self.model_holds:
            assert self.run(self.ledger.capture(hold_id)) == self.resolve(hold_id, "captured")

    @rule(hold_id=holds)
    def release(self, hold_id: int) -> None:
        if hold_id in self.model_holds:
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
            assert self.run(self.ledger.hold_status(hold_id)) == hold.status


LedgerMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestLedgerStateMachine = LedgerMachine.TestCase
