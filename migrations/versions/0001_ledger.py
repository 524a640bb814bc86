"""Credit ledger: users with cached balances and append-only transfers.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_ledger"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = "'signup', 'daily', 'grant', 'revoke', 'hold', 'capture', 'release'"

PG_APPEND_ONLY = """
CREATE FUNCTION ledger_transfers_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger_transfers is append-only';
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    # op.f(): these names are final; the naming convention must not prefix them again.
    op.create_table(
        "ledger_users",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("registered_at", sa.DateTime(), nullable=False),
        sa.Column("posted", sa.BigInteger(), nullable=False),
        sa.Column("pending", sa.BigInteger(), nullable=False),
        sa.Column("available", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("available >= 0", name=op.f("ck_ledger_users_available_nonnegative")),
        sa.CheckConstraint("pending >= 0", name=op.f("ck_ledger_users_pending_nonnegative")),
        sa.CheckConstraint("available = posted - pending",
                           name=op.f("ck_ledger_users_available_is_posted_minus_pending")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_ledger_users")),
    )
    op.create_table(
        "ledger_transfers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("debit_account", sa.String(length=40), nullable=False),
        sa.Column("credit_account", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("pending_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint("amount > 0", name=op.f("ck_ledger_transfers_amount_positive")),
        sa.CheckConstraint(f"kind IN ({KINDS})", name=op.f("ck_ledger_transfers_kind_known")),
        sa.CheckConstraint("(kind IN ('capture', 'release')) = (pending_id IS NOT NULL)",
                           name=op.f("ck_ledger_transfers_resolution_names_hold")),
        sa.CheckConstraint("(kind = 'hold') = (expires_at IS NOT NULL)",
                           name=op.f("ck_ledger_transfers_hold_expires")),
        sa.ForeignKeyConstraint(["user_id"], ["ledger_users.user_id"],
                                name=op.f("fk_ledger_transfers_user_id_ledger_users")),
        sa.ForeignKeyConstraint(["pending_id"], ["ledger_transfers.id"],
                                name=op.f("fk_ledger_transfers_pending_id_ledger_transfers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transfers")),
        sa.UniqueConstraint("key", name=op.f("uq_ledger_transfers_key")),
        # A hold resolves exactly once: the database refuses a second capture/release row.
        sa.UniqueConstraint("pending_id", name=op.f("uq_ledger_transfers_pending_id")),
    )
    op.create_index(op.f("ix_ledger_transfers_user_id"), "ledger_transfers", ["user_id", "id"])
    op.create_index(op.f("ix_ledger_transfers_expires_at"), "ledger_transfers", ["expires_at"])
    _create_append_only_triggers()


def _create_append_only_triggers() -> None:
    """Refuse UPDATE and DELETE on transfers in the database itself."""
    if op.get_context().dialect.name == "postgresql":
        op.execute(PG_APPEND_ONLY)
        op.execute("CREATE TRIGGER ledger_transfers_append_only BEFORE UPDATE OR DELETE "
                   "ON ledger_transfers FOR EACH ROW "
                   "EXECUTE FUNCTION ledger_transfers_append_only()")
    elif op.get_context().dialect.name == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER ledger_transfers_no_{action.lower()} BEFORE {action} "
                       "ON ledger_transfers BEGIN "
                       "SELECT RAISE(ABORT, 'ledger_transfers is append-only'); END")


def downgrade() -> None:
    op.drop_table("ledger_transfers")
    op.drop_table("ledger_users")
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION ledger_transfers_append_only()")
