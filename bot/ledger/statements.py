"""The ledger's write statements, built once per dialect with bound parameters.

Building a Core statement (``values()``, coercions, its cache key) cost more than running it
on SQLite; these are built once, and SQLAlchemy caches their compiled form. Each transfer is
one INSERT, and the database moves the user's cached balances in the same statement
(trigger ``ledger_transfers_move_balances``, migration 0004), so a hold is one statement and
so is its capture:

* :attr:`Statements.register` opens a user's balance row unless it exists;
* :attr:`Statements.hold` inserts a hold only if the user has the credits available: the
  check and the reservation are one statement, and on PostgreSQL ``FOR UPDATE`` locks the
  user's row so that a concurrent hold rechecks after this one;
* :attr:`Statements.credit` inserts a grant (admin, signup or daily) only if it leaves the
  user's posted balance within ``MAX_BALANCE``: the same one-statement check as a hold's;
* :attr:`Statements.insert` inserts any other transfer;
* :attr:`Statements.capture` and :attr:`Statements.release` insert a hold's resolution read
  from the hold itself, unless the hold is unknown or already resolved
  (``uq_ledger_transfers_pending_id``). A capture of an expired hold inserts a release with
  reason ``"expired"`` instead, as TigerBeetle refuses to post an expired pending transfer.

Every insert is ``ON CONFLICT DO NOTHING`` and returns what it inserted: a replayed key, or a
second resolution, inserts nothing, moves nothing, and returns no row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import BigInteger, Insert, String, Table, Text, bindparam, case, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from bot.ledger.models import MAX_BALANCE, LedgerUser, Transfer, UTCDateTime

#: The reason of a release that happened because the hold's time ran out.
EXPIRED = "expired"

users = cast(Table, LedgerUser.__table__)
transfers = cast(Table, Transfer.__table__)
HOLD_COLUMNS = ("key", "kind", "user_id", "debit_account", "credit_account", "amount",
                "created_at", "expires_at")
CREDIT_COLUMNS = ("key", "kind", "user_id", "debit_account", "credit_account", "amount",
                  "reason", "actor_id", "created_at")
RESOLUTION_COLUMNS = ("key", "kind", "user_id", "debit_account", "credit_account", "amount",
                      "pending_id", "reason", "created_at")


@dataclass(frozen=True)
class Statements:
    register: Insert
    hold: Insert
    credit: Insert
    insert: Insert
    capture: Insert
    release: Insert

    @classmethod
    def for_dialect(cls, name: str) -> Statements:
        dialect: Any = {"sqlite": sqlite, "postgresql": postgresql}.get(name)
        if dialect is None:
            raise ValueError(f"the ledger supports SQLite and PostgreSQL, not {name}")
        amount = bindparam("amount", type_=BigInteger())
        hold = (select(bindparam("hold_key", type_=String()), literal("hold", String()),
                       users.c.user_id, bindparam("debit_account", type_=String()),
                       bindparam("credit_account", type_=String()), amount,
                       bindparam("held_at", type_=UTCDateTime()),
                       bindparam("expires", type_=UTCDateTime()))
                .where(users.c.user_id == bindparam("user"), users.c.available >= amount)
                .with_for_update())
        credit = (select(bindparam("credit_key", type_=String()),
                         bindparam("credit_kind", type_=String()), users.c.user_id,
                         bindparam("debit_account", type_=String()),
                         bindparam("credit_account", type_=String()), amount,
                         bindparam("reason", type_=Text()),
                         bindparam("actor_id", type_=BigInteger()),
                         bindparam("created_at", type_=UTCDateTime()))
                  .where(users.c.user_id == bindparam("user"),
                         users.c.posted <= MAX_BALANCE - amount)
                  .with_for_update())
        expired = transfers.c.expires_at <= bindparam("now", type_=UTCDateTime())
        return cls(
            register=dialect.insert(users).values(posted=0, pending=0, available=0)
            .on_conflict_do_nothing(index_elements=["user_id"]),
            hold=_returning(dialect.insert(transfers).from_select(HOLD_COLUMNS, hold),
                            transfers.c.id),
            credit=_returning(dialect.insert(transfers).from_select(CREDIT_COLUMNS, credit),
                              transfers.c.id),
            insert=_returning(dialect.insert(transfers), transfers.c.id),
            capture=_resolution(dialect, case((expired, "release"), else_="capture"),
                                case((expired, EXPIRED), else_=None)),
            release=_resolution(dialect, literal("release", String()),
                                bindparam("resolution_reason", type_=Text())),
        )


def _resolution(dialect: Any, kind: ColumnElement[Any], reason: ColumnElement[Any]) -> Insert:
    """Resolve hold ``hold_id`` as ``kind``; returns the kind it inserted."""
    hold = (select(bindparam("resolution_key", type_=String()), kind, transfers.c.user_id,
                   transfers.c.debit_account, transfers.c.credit_account, transfers.c.amount,
                   transfers.c.id, reason, bindparam("resolved_at", type_=UTCDateTime()))
            .where(transfers.c.id == bindparam("hold_id"), transfers.c.kind == "hold"))
    return _returning(dialect.insert(transfers).from_select(RESOLUTION_COLUMNS, hold),
                      transfers.c.kind)


def _returning(statement: Any, column: ColumnElement[Any]) -> Insert:
    returning: Insert = statement.on_conflict_do_nothing().returning(column)
    return returning
