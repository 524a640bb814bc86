"""Ledger limits and free jobs: one transfer moves at most 10^12 credits and a balance holds at
most 10^15 (CHECK constraints), and a job may have no hold (a price of 0).

Without limits an admin's grant of 2^63-1 plus a daily grant overflowed SQLite's INTEGER: the
balances became REAL, holds stopped reducing them, and the audit failed. Rows that broke the new
limits can only come from that bug; they are repaired here, before the constraints apply: an
amount over the limit is cut to it (its reason says so) and its user's cached balances are
derived again from the transfers.

On SQLite a CHECK constraint can only be added by rebuilding the table. Alembic's batch mode
drops the old table with its rows still referenced, which SQLite's enforced foreign keys refuse
(PRAGMA foreign_keys cannot be turned off inside the migration's transaction), so the ledger's
tables are rebuilt here in the order that keeps every reference whole by the commit: rows kept
in a temporary table, the table dropped and created again with its own DDL plus the new
constraint, the rows put back, then its indexes and triggers (dropped with it) restored.
``jobs`` has no references, so batch mode rebuilds it.

Revision ID: 0005_ledger_limits
Revises: 0004_ledger_balance_triggers
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_ledger_limits"
down_revision: str | None = "0004_ledger_balance_triggers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_AMOUNT = 10**12
MAX_BALANCE = 10**15
# table -> (constraint name, condition); the names follow the models' naming convention.
LIMITS = {
    "ledger_transfers": ("ck_ledger_transfers_amount_capped", f"amount <= {MAX_AMOUNT}"),
    "ledger_users": ("ck_ledger_users_posted_capped", f"posted <= {MAX_BALANCE}"),
}
# Each table and its key; transfers go back in id order, so each resolution follows the hold it
# names. Children before parents does not matter: foreign keys are deferred.
TABLES = {"ledger_transfers": "id", "ledger_users": "user_id"}

# A user's balances as their transfers say (bot.ledger.service.Ledger.audit sums the same way).
POSTED = ("CASE WHEN kind IN ('signup', 'daily', 'grant') THEN amount "
          "WHEN kind IN ('revoke', 'capture') THEN -amount ELSE 0 END")
PENDING = ("CASE WHEN kind = 'hold' THEN amount "
           "WHEN kind IN ('capture', 'release') THEN -amount ELSE 0 END")


def upgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        _rebuild_sqlite(_add_limit, repair=True)
        with op.batch_alter_table("jobs") as batch:
            batch.alter_column("hold_id", existing_type=sa.BigInteger(), nullable=True)
        return
    op.execute("ALTER TABLE ledger_transfers DISABLE TRIGGER ledger_transfers_append_only")
    _repair("ledger_transfers", "ledger_users")
    op.execute("ALTER TABLE ledger_transfers ENABLE TRIGGER ledger_transfers_append_only")
    for table, (name, condition) in LIMITS.items():
        op.create_check_constraint(op.f(name), table, condition)
    op.alter_column("jobs", "hold_id", existing_type=sa.BigInteger(), nullable=True)


def downgrade() -> None:
    # Free jobs have no hold; the old schema needs a number, and no hold has id 0.
    op.execute("UPDATE jobs SET hold_id = 0 WHERE hold_id IS NULL")
    if op.get_context().dialect.name == "sqlite":
        with op.batch_alter_table("jobs") as batch:
            batch.alter_column("hold_id", existing_type=sa.BigInteger(), nullable=False)
        _rebuild_sqlite(_remove_limit, repair=False)
        return
    op.alter_column("jobs", "hold_id", existing_type=sa.BigInteger(), nullable=False)
    for table, (name, _condition) in LIMITS.items():
        op.drop_constraint(op.f(name), table, type_="check")


def _repair(transfers: str, users: str) -> None:
    """Cut amounts over MAX_AMOUNT to it, then derive their users' balances (and any balance
    over MAX_BALANCE, such as a REAL one) from the transfers again."""
    bind = op.get_bind()
    capped = [row[0] for row in bind.exec_driver_sql(
        f"SELECT DISTINCT user_id FROM {transfers} WHERE amount > {MAX_AMOUNT}")]
    op.execute(f"UPDATE {transfers} SET reason = COALESCE(reason || ' ', '') || "
               f"'(cut from ' || CAST(amount AS TEXT) || ' to the limit of {MAX_AMOUNT} "
               f"by migration 0005)', amount = {MAX_AMOUNT} WHERE amount > {MAX_AMOUNT}")
    affected = f"posted > {MAX_BALANCE}"
    if capped:
        affected += f" OR user_id IN ({', '.join(str(int(user)) for user in capped)})"

    def total(expression: str) -> str:
        return (f"COALESCE((SELECT SUM({expression}) FROM {transfers} AS t "
                f"WHERE t.user_id = {users}.user_id), 0)")

    op.execute(f"UPDATE {users} SET posted = {total(POSTED)}, pending = {total(PENDING)}, "
               f"available = {total(POSTED)} - {total(PENDING)} WHERE {affected}")


def _constraint(table: str) -> str:
    name, condition = LIMITS[table]
    return f", \n\tCONSTRAINT {name} CHECK ({condition})"


def _add_limit(table: str, ddl: str) -> str:
    body = ddl.rstrip()
    assert body.endswith(")"), f"unexpected DDL for {table}"
    return body[:-1].rstrip() + _constraint(table) + "\n)"


def _remove_limit(table: str, ddl: str) -> str:
    assert _constraint(table) in ddl, f"{table} lacks its limit"
    return ddl.replace(_constraint(table), "")


def _rebuild_sqlite(change: Callable[[str, str], str], *, repair: bool) -> None:
    """Rebuild each ledger table with ``change(table, ddl)`` as its new DDL, keeping its rows,
    indexes and triggers (SQLite's own procedure for table changes ALTER cannot make)."""
    bind = op.get_bind()
    # Dropping a referenced table counts its children as violations; putting the rows back
    # counts them off again. Deferred, only the count at the commit matters (this PRAGMA
    # ends with the transaction).
    op.execute("PRAGMA defer_foreign_keys = ON")
    schema: dict[str, tuple[str, list[str]]] = {}
    for table in TABLES:
        rows = bind.exec_driver_sql(
            "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
            "ORDER BY type = 'table' DESC, rowid", (table,)).all()
        assert rows and rows[0][0] == "table", f"no table {table}"
        schema[table] = (rows[0][1], [sql for _type, sql in rows[1:]])
        op.execute(f"CREATE TEMP TABLE kept_{table} AS SELECT * FROM {table}")
    if repair:
        _repair("kept_ledger_transfers", "kept_ledger_users")
    for table, key in TABLES.items():
        ddl, dependents = schema[table]
        op.execute(f"DROP TABLE {table}")
        op.execute(change(table, ddl))
        op.execute(f"INSERT INTO {table} SELECT * FROM temp.kept_{table} ORDER BY {key}")
        op.execute(f"DROP TABLE temp.kept_{table}")
        for sql in dependents:  # indexes and triggers, after the rows: no trigger fires
            op.execute(sql)
