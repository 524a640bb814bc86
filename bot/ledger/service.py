"""The Ledger: every balance change is one short transaction that inserts a transfer.

Idempotency keys are unique in the database, so a replayed request inserts nothing; balances
are cached per user and moved in the same transaction as the transfer that explains them.
On SQLite every write transaction starts with BEGIN IMMEDIATE (see bot.database); on
PostgreSQL, conditional UPDATEs and row locks make the same code safe under READ COMMITTED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, TypeVar

from sqlalchemy import Insert, Row, and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import aliased

from bot.database import READ_ONLY, create_database, upgrade
from bot.ledger.errors import InsufficientCredits, KeyReused, UnknownHold
from bot.ledger.models import LedgerUser, Transfer

T = TypeVar("T")
#: What tells the ledger and the bot the time: an aware UTC datetime; tests pass a fake one.
Clock = Callable[[], datetime]

DISCORD_EPOCH_MS = 1420070400000
SIGNUP, DAILY, ADMIN, SPEND = "system:signup", "system:daily", "system:admin", "system:spend"
# How each kind moves the user's posted balance; holds and releases never touch it.
POSTED_IN = ("signup", "daily", "grant")
POSTED_OUT = ("revoke", "capture")
RESOLUTIONS = ("capture", "release")
# History shows each transfer's effect on the available balance, so its amounts add up to it.
AVAILABLE_SIGN = {"signup": 1, "daily": 1, "grant": 1, "release": 1, "revoke": -1, "hold": -1,
                  "capture": 0}
HOLD_STATUS = {None: "pending", "capture": "captured", "release": "released"}


def snowflake_created_at(user_id: int) -> datetime:
    """When a Discord account was made, read from its snowflake id."""
    return datetime.fromtimestamp(((user_id >> 22) + DISCORD_EPOCH_MS) / 1000, tz=UTC)


def system_clock() -> datetime:
    return datetime.now(UTC)


def user_account(user_id: int) -> str:
    return f"user:{user_id}"


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a user's statement; ``amount`` is signed from the user's view."""

    kind: str
    amount: int
    reason: str | None
    actor: int | None
    time: datetime


class _Replayed(Exception):
    """A concurrent request with the same key committed first; the retry will find it."""


class Ledger:
    """Credits per Discord user; open with ``await Ledger.connect(url)``."""

    def __init__(self, database: AsyncEngine, clock: Clock, *, signup_credits: int,
                 daily_credits: int, min_account_age: timedelta, hold_ttl: timedelta) -> None:
        self._database = database
        self._clock = clock
        self._signup_credits = signup_credits
        self._daily_credits = daily_credits
        self._min_account_age = min_account_age
        self._hold_ttl = hold_ttl
        dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(database.dialect.name)
        if dialect is None:
            raise ValueError(f"the ledger supports SQLite and PostgreSQL, not "
                             f"{database.dialect.name}")
        self._insert: Callable[[Any], Any] = dialect.insert

    @classmethod
    async def connect(cls, database_url: str, clock: Clock | None = None, *,
                      signup_credits: int = 200, daily_credits: int = 100,
                      min_account_age: timedelta = timedelta(0),
                      hold_ttl: timedelta = timedelta(hours=6)) -> Ledger:
        """Open the database and migrate it to the newest schema."""
        database = create_database(database_url)
        try:
            ledger = cls(database, clock or system_clock, signup_credits=signup_credits,
                         daily_credits=daily_credits, min_account_age=min_account_age,
                         hold_ttl=hold_ttl)
            await upgrade(database)
        except BaseException:
            await database.dispose()
            raise
        return ledger

    @property
    def database(self) -> AsyncEngine:
        return self._database

    async def close(self) -> None:
        await self._database.dispose()

    def now(self) -> datetime:
        """The ledger's clock, which tests and housekeeping share."""
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the ledger clock must return an aware UTC datetime")
        return now.astimezone(UTC)

    def next_daily_at(self) -> datetime:
        """The next UTC midnight, when a new daily allowance becomes due."""
        tomorrow = self.now().date() + timedelta(days=1)
        return datetime.combine(tomorrow, time(), tzinfo=UTC)

    # -- transactions ---------------------------------------------------------------------

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in one write transaction, once more if a same-key race was lost."""
        try:
            async with self._database.begin() as conn:
                return await work(conn)
        except _Replayed:
            async with self._database.begin() as conn:
                return await work(conn)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._database.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            yield conn

    async def _insert_transfer(self, conn: AsyncConnection, **values: Any) -> int | None:
        """Insert a transfer; None if its key (or its hold's resolution) already exists."""
        values.setdefault("created_at", self.now())
        statement: Insert = (self._insert(Transfer).values(**values)
                             .on_conflict_do_nothing().returning(Transfer.id))
        return (await conn.execute(statement)).scalar_one_or_none()

    @staticmethod
    async def _by_key(conn: AsyncConnection, key: str) -> Row[Any] | None:
        return (await conn.execute(select(Transfer.__table__).where(Transfer.key == key))).first()

    @staticmethod
    def _check_replay(existing: Row[Any], kind: str, user_id: int,
                      amount: int | None = None) -> None:
        if existing.kind != kind or existing.user_id != user_id or (
                amount is not None and existing.amount != amount):
            raise KeyReused(f"key {existing.key!r} was already used for a {existing.kind} of "
                            f"{existing.amount} for user {existing.user_id}")

    async def _register(self, conn: AsyncConnection, user_id: int) -> None:
        await conn.execute(self._insert(LedgerUser)
                           .values(user_id=user_id, registered_at=self.now(), posted=0,
                                   pending=0, available=0)
                           .on_conflict_do_nothing(index_elements=["user_id"]))

    @staticmethod
    async def _available(conn: AsyncConnection, user_id: int) -> int:
        value = await conn.scalar(select(LedgerUser.available)
                                  .where(LedgerUser.user_id == user_id))
        return value or 0

    @staticmethod
    async def _move(conn: AsyncConnection, user_id: int, *, posted: int = 0,
                    pending: int = 0) -> None:
        await conn.execute(update(LedgerUser).where(LedgerUser.user_id == user_id).values(
            posted=LedgerUser.posted + posted, pending=LedgerUser.pending + pending,
            available=LedgerUser.available + posted - pending))

    async def _credit(self, conn: AsyncConnection, user_id: int, kind: str, amount: int,
                      key: str, source: str, *, reason: str | None = None,
                      actor_id: int | None = None) -> bool:
        """Credit the user from a system account unless ``key`` was used; True if credited."""
        transfer_id = await self._insert_transfer(
            conn, key=key, kind=kind, user_id=user_id, debit_account=source,
            credit_account=user_account(user_id), amount=amount, reason=reason,
            actor_id=actor_id)
        if transfer_id is None:
            return False
        await self._move(conn, user_id, posted=amount)
        return True

    # -- users and grants -----------------------------------------------------------------

    async def touch(self, user_id: int, account_created_at: datetime | None = None) -> int:
        """Register the user and apply the grants now due; returns the available balance."""
        now = self.now()
        created = account_created_at or snowflake_created_at(user_id)
        if created.tzinfo is None:
            raise ValueError("account_created_at must be an aware UTC datetime")
        signup_due = self._signup_credits > 0 and now - created >= self._min_account_age

        async def work(conn: AsyncConnection) -> int:
            await self._register(conn, user_id)
            if signup_due:
                await self._credit(conn, user_id, "signup", self._signup_credits,
                                   f"signup:{user_id}", SIGNUP, reason="signup bonus")
            if self._daily_credits > 0:
                await self._credit(conn, user_id, "daily", self._daily_credits,
                                   f"daily:{user_id}:{now:%Y-%m-%d}", DAILY,
                                   reason="daily allowance")
            return await self._available(conn, user_id)

        return await self._write(work)

    async def balance(self, user_id: int) -> int:
        async with self._read() as conn:
            return await self._available(conn, user_id)

    async def pending_holds(self, user_id: int) -> int:
        async with self._read() as conn:
            value = await conn.scalar(select(LedgerUser.pending)
                                      .where(LedgerUser.user_id == user_id))
            return value or 0

    async def grant(self, user_id: int, amount: int, actor_id: int, reason: str,
                    key: str) -> int:
        """Add credits as an admin; replaying ``key`` changes nothing. Returns the balance."""
        _check_amount(amount)

        async def work(conn: AsyncConnection) -> int:
            existing = await self._by_key(conn, key)
            if existing is not None:
                self._check_replay(existing, "grant", user_id, amount)
            else:
                await self._register(conn, user_id)
                if not await self._credit(conn, user_id, "grant", amount, key, ADMIN,
                                          reason=reason, actor_id=actor_id):
                    raise _Replayed
            return await self._available(conn, user_id)

        return await self._write(work)

    async def revoke(self, user_id: int, amount: int, actor_id: int, reason: str,
                     key: str) -> int:
        """Take back up to ``amount`` of what is available; returns the amount taken."""
        _check_amount(amount)

        async def work(conn: AsyncConnection) -> int:
            existing = await self._by_key(conn, key)
            if existing is not None:
                self._check_replay(existing, "revoke", user_id)
                return int(existing.amount)
            available = await conn.scalar(select(LedgerUser.available).with_for_update()
                                          .where(LedgerUser.user_id == user_id))
            taken = min(amount, available or 0)
            if taken == 0:
                return 0
            if await self._insert_transfer(
                    conn, key=key, kind="revoke", user_id=user_id,
                    debit_account=user_account(user_id), credit_account=ADMIN, amount=taken,
                    reason=reason, actor_id=actor_id) is None:
                raise _Replayed
            await self._move(conn, user_id, posted=-taken)
            return taken

        return await self._write(work)

    # -- holds ----------------------------------------------------------------------------

    async def hold(self, user_id: int, amount: int, key: str) -> int:
        """Reserve credits for a generation; the same key returns the same hold id."""
        _check_amount(amount)
        now = self.now()

        async def work(conn: AsyncConnection) -> int:
            existing = await self._by_key(conn, key)
            if existing is not None:
                self._check_replay(existing, "hold", user_id, amount)
                return int(existing.id)
            # One conditional UPDATE: the row lock makes check-and-reserve atomic.
            reserved = await conn.execute(
                update(LedgerUser)
                .where(LedgerUser.user_id == user_id, LedgerUser.available >= amount)
                .values(pending=LedgerUser.pending + amount,
                        available=LedgerUser.available - amount))
            if reserved.rowcount != 1:
                raise InsufficientCredits(await self._available(conn, user_id), amount)
            hold_id = await self._insert_transfer(
                conn, key=key, kind="hold", user_id=user_id,
                debit_account=user_account(user_id), credit_account=SPEND, amount=amount,
                created_at=now, expires_at=now + self._hold_ttl)
            if hold_id is None:
                raise _Replayed
            return hold_id

        return await self._write(work)

    async def capture(self, hold_id: int | str) -> bool:
        """Spend a hold's credits; False if the hold was already resolved."""
        return await self._resolve(int(hold_id), "capture", None)

    async def release(self, hold_id: int | str, reason: str | None = None) -> bool:
        """Give a hold's credits back; False if the hold was already resolved."""
        return await self._resolve(int(hold_id), "release", reason)

    async def _resolve(self, hold_id: int, kind: str, reason: str | None) -> bool:
        async def work(conn: AsyncConnection) -> bool:
            hold = (await conn.execute(select(Transfer.__table__).where(
                Transfer.id == hold_id, Transfer.kind == "hold"))).first()
            if hold is None:
                raise UnknownHold(f"no hold with id {hold_id}")
            # uq_ledger_transfers_pending_id turns a second resolution into a no-op here.
            if await self._insert_transfer(
                    conn, key=f"resolve:{hold_id}", kind=kind, user_id=hold.user_id,
                    debit_account=hold.debit_account, credit_account=hold.credit_account,
                    amount=hold.amount, pending_id=hold_id, reason=reason) is None:
                return False
            await self._move(conn, hold.user_id, pending=-hold.amount,
                             posted=-hold.amount if kind == "capture" else 0)
            return True

        return await self._write(work)

    async def hold_status(self, hold_id: int | str) -> str:
        """"pending", "captured" or "released"."""
        resolution = aliased(Transfer)
        async with self._read() as conn:
            row = (await conn.execute(
                select(Transfer.id, resolution.kind)
                .outerjoin(resolution, resolution.pending_id == Transfer.id)
                .where(Transfer.id == int(hold_id), Transfer.kind == "hold"))).first()
        if row is None:
            raise UnknownHold(f"no hold with id {hold_id}")
        return HOLD_STATUS[row[1]]

    def _expired_holds(self, now: datetime) -> Any:
        resolution = aliased(Transfer)
        return (select(Transfer.id)
                .outerjoin(resolution, resolution.pending_id == Transfer.id)
                .where(Transfer.kind == "hold", Transfer.expires_at <= now,
                       resolution.id.is_(None)))

    async def release_expired(self) -> int:
        """Release holds nobody resolved in time; safe to run any number of times."""
        async with self._read() as conn:
            expired = (await conn.scalars(self._expired_holds(self.now()))).all()
        released = 0
        for hold_id in expired:
            released += await self._resolve(hold_id, "release", "expired")
        return released

    # -- reading --------------------------------------------------------------------------

    async def history(self, user_id: int, limit: int = 20) -> list[HistoryEntry]:
        """Newest first."""
        async with self._read() as conn:
            rows = (await conn.execute(
                select(Transfer.kind, Transfer.amount, Transfer.reason, Transfer.actor_id,
                       Transfer.created_at)
                .where(Transfer.user_id == user_id)
                .order_by(Transfer.id.desc()).limit(limit))).all()
        return [HistoryEntry(kind=kind, amount=AVAILABLE_SIGN[kind] * amount, reason=reason,
                             actor=actor, time=at) for kind, amount, reason, actor, at in rows]

    async def audit(self) -> list[str]:
        """Every broken invariant, one sentence each; an empty list means healthy."""
        problems: list[str] = []
        async with self._read() as conn:
            sums = (select(
                Transfer.user_id,
                func.sum(case((Transfer.kind.in_(POSTED_IN), Transfer.amount),
                              (Transfer.kind.in_(POSTED_OUT), -Transfer.amount),
                              else_=0)).label("posted"),
                func.sum(case((Transfer.kind == "hold", Transfer.amount),
                              (Transfer.kind.in_(RESOLUTIONS), -Transfer.amount),
                              else_=0)).label("pending"))
                .group_by(Transfer.user_id).subquery())
            posted = func.coalesce(sums.c.posted, 0)
            pending = func.coalesce(sums.c.pending, 0)
            for user_id, *cached, real_posted, real_pending in await conn.execute(
                    select(LedgerUser.user_id, LedgerUser.posted, LedgerUser.pending,
                           LedgerUser.available, posted, pending)
                    .outerjoin(sums, sums.c.user_id == LedgerUser.user_id)
                    .where(or_(LedgerUser.posted != posted, LedgerUser.pending != pending,
                               LedgerUser.available != posted - pending,
                               LedgerUser.available < 0, posted - pending < 0))):
                problems.append(
                    f"user {user_id}: cached posted/pending/available "
                    f"{'/'.join(map(str, cached))}, transfers say "
                    f"{real_posted}/{real_pending}/{real_posted - real_pending}")
            for pending_id, count in await conn.execute(
                    select(Transfer.pending_id, func.count())
                    .where(Transfer.pending_id.is_not(None))
                    .group_by(Transfer.pending_id).having(func.count() > 1)):
                problems.append(f"hold {pending_id} was resolved {count} times")
            hold = aliased(Transfer)
            for resolution_id, pending_id in await conn.execute(
                    select(Transfer.id, Transfer.pending_id)
                    .outerjoin(hold, hold.id == Transfer.pending_id)
                    .where(Transfer.pending_id.is_not(None),
                           or_(hold.kind.is_(None), hold.kind != "hold",
                               and_(hold.kind == "hold",
                                    or_(hold.amount != Transfer.amount,
                                        hold.user_id != Transfer.user_id))))):
                problems.append(f"transfer {resolution_id} resolves {pending_id}, "
                                "which is not a matching hold")
            for hold_id in await conn.scalars(self._expired_holds(self.now())):
                problems.append(f"hold {hold_id} expired but is still pending")
        return problems


def _check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError(f"amount must be a positive whole number of credits, not {amount!r}")
