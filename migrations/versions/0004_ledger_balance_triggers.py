"""Ledger: the database moves a user's cached balances with each transfer it inserts.

Before, the ledger followed each transfer with an UPDATE of ledger_users in the same
transaction. A trigger does it now: every ledger operation is one INSERT, and no code path can
insert a transfer and forget its balance. The CHECKs on ledger_users still refuse a negative
available balance.

Revision ID: 0004_ledger_balance_triggers
Revises: 0003_job_faults
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_ledger_balance_triggers"
down_revision: str | None = "0003_job_faults"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# How each kind of transfer moves its user's balances (available = posted - pending).
MOVE_BALANCES = """
UPDATE ledger_users SET
    posted = posted + CASE
        WHEN NEW.kind IN ('signup', 'daily', 'grant') THEN NEW.amount
        WHEN NEW.kind IN ('revoke', 'capture') THEN -NEW.amount
        ELSE 0 END,
    pending = pending + CASE
        WHEN NEW.kind = 'hold' THEN NEW.amount
        WHEN NEW.kind IN ('capture', 'release') THEN -NEW.amount
        ELSE 0 END,
    available = available + CASE
        WHEN NEW.kind IN ('signup', 'daily', 'grant', 'release') THEN NEW.amount
        WHEN NEW.kind IN ('revoke', 'hold') THEN -NEW.amount
        ELSE 0 END
WHERE user_id = NEW.user_id;
"""


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("CREATE FUNCTION ledger_transfers_move_balances() RETURNS trigger AS $$\n"
                   f"BEGIN\n{MOVE_BALANCES}RETURN NULL;\nEND;\n$$ LANGUAGE plpgsql")
        op.execute("CREATE TRIGGER ledger_transfers_move_balances AFTER INSERT "
                   "ON ledger_transfers FOR EACH ROW "
                   "EXECUTE FUNCTION ledger_transfers_move_balances()")
    else:
        op.execute("CREATE TRIGGER ledger_transfers_move_balances AFTER INSERT "
                   f"ON ledger_transfers BEGIN {MOVE_BALANCES} END")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER ledger_transfers_move_balances ON ledger_transfers")
        op.execute("DROP FUNCTION ledger_transfers_move_balances()")
    else:
        op.execute("DROP TRIGGER ledger_transfers_move_balances")
