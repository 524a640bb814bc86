"""The Ledger: every balance change is one short transaction that inserts a transfer.

Idempotency keys are unique in the database, so a replayed request inserts nothing; balances
are cached per user, and the database moves them with each transfer it inserts (a trigger), so
an operation is one INSERT (see bot.ledger.statements).
Writes go through a :class:`bot.database.Writer`: on SQLite one at a time, each whole in the
writer's thread, beginning with BEGIN IMMEDIATE; on PostgreSQL, conditional UPDATEs and row
locks make the same code safe under READ COMMITTED. The write steps are plain synchronous
functions of a ``Connection``, so the same code runs in the writer's thread and, through
``run_sync``, inside a transaction that a caller owns (:meth:`Ledger.transaction`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, Row, Select, and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import aliased

from bot.database import READ_ONLY, OneTrip, Writer, create_database, upgrade
from bot.ledger.errors import (
    AmountTooLarge,
    BalanceTooLarge,
    InsufficientCredits,
    KeyReused,
    UnknownHold,
)
from bot.ledger.models import MAX_AMOUNT, MAX_BALANCE, LedgerUser, Transfer
from bot.ledger.statements import EXPIRED, Statements

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
HoldStatus = Literal["pending", "captured", "released", "expired"]



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


@dataclass(frozen=True)
class HoldInfo:
    """A hold as the bot's reconciliation sees it; ``status`` as :meth:`Ledger.hold_status`."""

    id: int
    user_id: int
    amount: int
    key: str
    created_at: datetime
    expires_at: datetime
    status: HoldStatus


def _status(resolution: str | None, reason: str | None, expires_at: datetime,
            now: datetime) -> HoldStatus:
    """Expired: released because its time ran out, or unresolved past ``expires_at`` (an
    instant that already counts as expired, as the sweep has always had it)."""
    if resolution == "capture":
        return "captured"
    if resolution == "release":
        return "expired" if reason == EXPIRED else "released"
    return "expired" if expires_at <= now else "pending"


# A hold's resolution, if it has one; joined on uq_ledger_transfers_pending_id.
RESOLUTION = aliased(Transfer, name="resolution")


def _hold_query() -> Select[*tuple[Any, ...]]:
    """Holds with what :class:`HoldInfo` needs, their resolution's kind and reason included."""
    return (select(Transfer.id, Transfer.user_id, Transfer.amount, Transfer.key,
                   Transfer.created_at, Transfer.expires_at,
                   RESOLUTION.kind.label("resolution"),
                   RESOLUTION.reason.label("resolution_reason"))
            .outerjoin(RESOLUTION, RESOLUTION.pending_id == Transfer.id)
            .where(Transfer.kind == "hold"))


def _unresolved_query() -> Select[*tuple[Any, ...]]:
    """Unresolved holds, looked for only among users with credits on hold: the (user_id, id)
    index then keeps the search away from the years of resolved holds of everyone else."""
    on_hold = select(LedgerUser.user_id).where(LedgerUser.pending > 0)
    return _hold_query().where(RESOLUTION.id.is_(None), Transfer.user_id.in_(on_hold))


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
        self._sql = Statements.for_dialect(database.dialect.name)
        self._writer = Writer(database)
        # A hold in a caller's transaction runs on aiosqlite, not in the writer's thread.
        self._hold_in_one_trip = (OneTrip(self._sql.hold, database.dialect)
                                  if database.dialect.driver == "aiosqlite" else None)

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
        await self._writer.close()
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

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction on the ledger's database for the caller's own rows too.

        Pass the connection to :meth:`hold` to write a hold in it: the hold and, say, the job
        it pays for then commit together or not at all. It keeps the ledger's write discipline
        (on SQLite the writer's lock, so keep it short); committed when the block ends,
        rolled back if it raises.
        """
        async with self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._database.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            yield conn

    def _insert_transfer(self, conn: Connection, **values: Any) -> int | None:
        """Insert a transfer (its balances move with it); None if its key is taken."""
        values.setdefault("created_at", self.now())
        return conn.execute(self._sql.insert, values).scalar_one_or_none()

    @staticmethod
    def _by_key(conn: Connection, key: str) -> Row[Any] | None:
        return conn.execute(select(Transfer.__table__).where(Transfer.key == key)).first()

    @staticmethod
    def _check_replay(existing: Row[Any], kind: str, user_id: int,
                      amount: int | None = None) -> None:
        if existing.kind != kind or existing.user_id != user_id or (
                amount is not None and existing.amount != amount):
            raise KeyReused(f"key {existing.key!r} was already used for a {existing.kind} of "
                            f"{existing.amount} for user {existing.user_id}")

    def _register(self, conn: Connection, user_id: int) -> None:
        conn.execute(self._sql.register, {"user_id": user_id, "registered_at": self.now()})

    @staticmethod
    def _available(conn: Connection, user_id: int) -> int:
        value = conn.scalar(select(LedgerUser.available).where(LedgerUser.user_id == user_id))
        return value or 0

    def _credit(self, conn: Connection, user_id: int, kind: str, amount: int, key: str,
                source: str, *, reason: str | None = None, actor_id: int | None = None) -> bool:
        """Credit the user from a system account unless ``key`` was used; True if credited.

        Raises :class:`BalanceTooLarge`, crediting nothing, if the posted balance would pass
        ``MAX_BALANCE``; the check and the credit are one statement (``Statements.credit``).
        """
        credited = conn.execute(self._sql.credit, {
            "credit_key": key, "credit_kind": kind, "user": user_id, "debit_account": source,
            "credit_account": user_account(user_id), "amount": amount, "reason": reason,
            "actor_id": actor_id, "created_at": self.now()}).scalar_one_or_none()
        if credited is not None:
            return True
        if self._by_key(conn, key) is None:
            raise BalanceTooLarge(user_id, amount, MAX_BALANCE)
        return False

    def _grant_due(self, conn: Connection, user_id: int, kind: str, amount: int, key: str,
                   source: str, reason: str) -> None:
        """A lazy grant. A balance at MAX_BALANCE takes no more: the grant stays due for a
        later touch, and touching (so generating) keeps working."""
        with suppress(BalanceTooLarge):
            self._credit(conn, user_id, kind, amount, key, source, reason=reason)

    # -- users and grants -----------------------------------------------------------------

    async def touch(self, user_id: int, account_created_at: datetime | None = None) -> int:
        """Register the user and apply the grants now due; returns the available balance."""
        now = self.now()
        created = account_created_at or snowflake_created_at(user_id)
        if created.tzinfo is None:
            raise ValueError("account_created_at must be an aware UTC datetime")
        signup_due = self._signup_credits > 0 and now - created >= self._min_account_age

        def work(conn: Connection) -> int:
            self._register(conn, user_id)
            if signup_due:
                self._grant_due(conn, user_id, "signup", self._signup_credits,
                                f"signup:{user_id}", SIGNUP, "signup bonus")
            if self._daily_credits > 0:
                self._grant_due(conn, user_id, "daily", self._daily_credits,
                                f"daily:{user_id}:{now:%Y-%m-%d}", DAILY, "daily allowance")
            return self._available(conn, user_id)

        return await self._writer.run(work)

    async def balance(self, user_id: int) -> int:
        async with self._read() as conn:
            value = await conn.scalar(select(LedgerUser.available)
                                      .where(LedgerUser.user_id == user_id))
            return value or 0

    async def pending_holds(self, user_id: int) -> int:
        """The credits the user has on hold."""
        async with self._read() as conn:
            value = await conn.scalar(select(LedgerUser.pending)
                                      .where(LedgerUser.user_id == user_id))
            return value or 0

    async def unresolved_holds(self, *, created_before: datetime) -> list[HoldInfo]:
        """Every unresolved hold made before the cutoff, expired or not, oldest first; the bot
        releases those whose job row is missing."""
        return await self._fetch_holds(
            _unresolved_query().where(Transfer.created_at < created_before))

    async def grant(self, user_id: int, amount: int, actor_id: int, reason: str,
                    key: str) -> int:
        """Add credits as an admin; replaying ``key`` changes nothing. Returns the balance.

        Raises :class:`AmountTooLarge` over ``MAX_AMOUNT``, and :class:`BalanceTooLarge` if
        the balance would pass ``MAX_BALANCE`` (a replay with the same terms never does).
        """
        _check_amount(amount)

        def work(conn: Connection) -> int:
            self._register(conn, user_id)
            if not self._credit(conn, user_id, "grant", amount, key, ADMIN, reason=reason,
                                actor_id=actor_id):
                self._check_replay(self._existing(conn, key), "grant", user_id, amount)
            return self._available(conn, user_id)

        return await self._writer.run(work)

    async def revoke(self, user_id: int, amount: int, actor_id: int, reason: str,
                     key: str) -> int:
        """Take back up to ``amount`` of what is available; returns the amount taken."""
        _check_amount(amount)

        def work(conn: Connection) -> int:
            existing = self._by_key(conn, key)
            if existing is None:
                available = conn.scalar(select(LedgerUser.available).with_for_update()
                                        .where(LedgerUser.user_id == user_id))
                taken = min(amount, available or 0)
                if taken == 0:
                    return 0
                if self._insert_transfer(
                        conn, key=key, kind="revoke", user_id=user_id,
                        debit_account=user_account(user_id), credit_account=ADMIN,
                        amount=taken, reason=reason, actor_id=actor_id) is not None:
                    return taken
                existing = self._existing(conn, key)  # a concurrent revoke with this key won
            self._check_replay(existing, "revoke", user_id)
            return int(existing.amount)

        return await self._writer.run(work)

    def _existing(self, conn: Connection, key: str) -> Row[Any]:
        """The transfer that took ``key`` first (it committed, so this statement sees it)."""
        existing = self._by_key(conn, key)
        if existing is None:
            raise RuntimeError(f"key {key!r} conflicted but no transfer has it")
        return existing

    # -- holds ----------------------------------------------------------------------------

    async def hold(self, user_id: int, amount: int, key: str, *,
                   connection: AsyncConnection | None = None) -> int:
        """Reserve credits for a generation; the same key returns the same hold id.

        With ``connection`` (from :meth:`transaction`) the hold is written in the caller's
        transaction and commits with it; an error leaves that transaction to roll back.
        """
        _check_amount(amount)
        now = self.now()
        params = {"hold_key": key, "user": user_id, "amount": amount,
                  "debit_account": user_account(user_id), "credit_account": SPEND,
                  "held_at": now, "expires": now + self._hold_ttl}

        def work(conn: Connection) -> int:
            hold_id = conn.execute(self._sql.hold, params).scalar_one_or_none()
            return self._not_held(conn, user_id, amount, key) if hold_id is None else hold_id

        if connection is None:
            return await self._writer.run(work)
        if self._hold_in_one_trip is None:
            return await connection.run_sync(work)
        inserted = await self._hold_in_one_trip.fetchall(connection, params)
        if inserted:
            return int(inserted[0][0])
        return await connection.run_sync(self._not_held, user_id, amount, key)

    def _not_held(self, conn: Connection, user_id: int, amount: int, key: str) -> int:
        """The hold inserted nothing: the key was used before, or the credits are not there."""
        existing = self._by_key(conn, key)
        if existing is None:
            raise InsufficientCredits(self._available(conn, user_id), amount)
        self._check_replay(existing, "hold", user_id, amount)
        return int(existing.id)

    async def capture(self, hold_id: int | str) -> bool:
        """Spend a hold's credits; False if it was already resolved or has expired.

        An expired hold cannot be spent: this call then releases it as expired.
        """
        now = self.now()
        return await self._writer.run(
            lambda conn: self._resolve(conn, int(hold_id), "capture", None, now))

    async def release(self, hold_id: int | str, reason: str | None = None) -> bool:
        """Give a hold's credits back; False if the hold was already resolved."""
        now = self.now()
        return await self._writer.run(
            lambda conn: self._resolve(conn, int(hold_id), "release", reason, now))

    def _resolve(self, conn: Connection, hold_id: int, kind: str, reason: str | None,
                 now: datetime) -> bool:
        """Resolve a hold once; True if this call resolved it as ``kind``."""
        statement = self._sql.capture if kind == "capture" else self._sql.release
        resolved = conn.execute(statement, {
            "resolution_key": f"resolve:{hold_id}", "hold_id": hold_id,
            "resolution_reason": reason, "now": now, "resolved_at": now}).scalar_one_or_none()
        if resolved is None and conn.scalar(select(Transfer.id).where(
                Transfer.id == hold_id, Transfer.kind == "hold")) is None:
            raise UnknownHold(f"no hold with id {hold_id}")
        return bool(resolved == kind)

    async def hold_status(self, hold_id: int | str) -> HoldStatus:
        """"pending", "captured", "released" or "expired" (its time ran out unresolved)."""
        info = await self.hold_info(hold_id)
        if info is None:
            raise UnknownHold(f"no hold with id {hold_id}")
        return info.status

    async def hold_info(self, hold_id: int | str) -> HoldInfo | None:
        """The hold with this id; None if there is none."""
        found = await self._fetch_holds(_hold_query().where(Transfer.id == int(hold_id)))
        return found[0] if found else None

    async def _fetch_holds(self, query: Select[*tuple[Any, ...]]) -> list[HoldInfo]:
        now = self.now()
        async with self._read() as conn:
            rows = (await conn.execute(query.order_by(Transfer.id))).all()
        return [HoldInfo(id=row.id, user_id=row.user_id, amount=row.amount, key=row.key,
                         created_at=row.created_at, expires_at=row.expires_at,
                         status=_status(row.resolution, row.resolution_reason,
                                            row.expires_at, now))
                for row in rows]

    async def release_expired(self, keep: Callable[[HoldInfo], bool] | None = None) -> int:
        """Release holds nobody resolved in time, except those ``keep`` says to leave.

        Safe to run any number of times, and alongside captures: each hold resolves once.
        Returns how many this call released.
        """
        now = self.now()
        expired = await self._fetch_holds(_unresolved_query().where(Transfer.expires_at <= now))
        doomed = [hold.id for hold in expired if keep is None or not keep(hold)]
        if not doomed:
            return 0
        return await self._writer.run(lambda conn: sum(
            self._resolve(conn, hold_id, "release", EXPIRED, now) for hold_id in doomed))

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
        """Every broken invariant, one sentence each; an empty list means healthy.

        An expired hold that nothing has resolved yet is not broken: expiry is enforced when a
        hold is resolved (it can no longer be captured), and the sweep leaves alone the holds
        of jobs still running, which their job resolves.
        """
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
        return problems


def _check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError(f"amount must be a positive whole number of credits, not {amount!r}")
    if amount > MAX_AMOUNT:
        raise AmountTooLarge(amount, MAX_AMOUNT)
