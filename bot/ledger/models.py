"""Ledger tables: append-only transfers plus one cached balance row per user.

Transfers follow TigerBeetle's two-phase model: a hold is a pending transfer, and its capture
or release is a second transfer naming it in ``pending_id``. A unique constraint on
``pending_id`` lets the database, not the code, guarantee that a hold resolves exactly once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import Mapped, mapped_column

from bot.database import Base

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")

KINDS = ("signup", "daily", "grant", "revoke", "hold", "capture", "release")

#: The most one transfer moves, and the most a balance holds. Far below 2^63, so no sum the
#: ledger or its audit computes can overflow a 64-bit integer (on SQLite an overflow silently
#: turns the column into a REAL). The code refuses more (bot.ledger.errors.OverLimit), and the
#: CHECK constraints below (migration 0005) refuse it again in the database.
MAX_AMOUNT = 10**12
MAX_BALANCE = 10**15


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC and hands back aware UTC, the same on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class LedgerUser(Base):
    """A user account; posted/pending/available cache the sums of its transfers.

    The database moves them with each inserted transfer: trigger
    ``ledger_transfers_move_balances`` (migration 0004), which models cannot declare.
    """

    __tablename__ = "ledger_users"
    __table_args__ = (
        CheckConstraint("available >= 0", name="available_nonnegative"),
        CheckConstraint("pending >= 0", name="pending_nonnegative"),
        CheckConstraint("available = posted - pending", name="available_is_posted_minus_pending"),
        # posted bounds the other two: 0 <= pending, available <= posted.
        CheckConstraint(f"posted <= {MAX_BALANCE}", name="posted_capped"),
    )

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    posted: Mapped[int] = mapped_column(BigInteger, default=0)
    pending: Mapped[int] = mapped_column(BigInteger, default=0)
    available: Mapped[int] = mapped_column(BigInteger, default=0)


class Transfer(Base):
    """One movement of credits; rows are only ever inserted."""

    __tablename__ = "ledger_transfers"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(f"amount <= {MAX_AMOUNT}", name="amount_capped"),
        CheckConstraint("kind IN ({})".format(", ".join(f"'{k}'" for k in KINDS)),
                        name="kind_known"),
        CheckConstraint("(kind IN ('capture', 'release')) = (pending_id IS NOT NULL)",
                        name="resolution_names_hold"),
        CheckConstraint("(kind = 'hold') = (expires_at IS NOT NULL)", name="hold_expires"),
        Index(None, "user_id", "id"),
        Index(None, "expires_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int] = mapped_column(ForeignKey(LedgerUser.user_id))
    debit_account: Mapped[str] = mapped_column(String(40))
    credit_account: Mapped[str] = mapped_column(String(40))
    amount: Mapped[int] = mapped_column(BigInteger)
    pending_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_transfers.id"),
                                                   unique=True)
    reason: Mapped[str | None] = mapped_column(Text)
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
