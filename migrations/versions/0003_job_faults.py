"""Jobs under faults: why a job ended, deliveries that could not be charged, the message that
shows a job's result (recorded the moment Discord returned it, so a restart finishes a posted job
instead of posting it again), and worker crashes per request (the quarantine).

Revision ID: 0003_job_faults
Revises: 0002_jobs
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_job_faults"
down_revision = "0002_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("end_reason", sa.String(24), nullable=True))
        batch.add_column(sa.Column("delivered_free", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("result_message_id", sa.BigInteger(), nullable=True))
    op.create_table(
        "job_crashes",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("crashes", sa.Integer(), nullable=False),
        sa.Column("last_job_id", sa.String(32), nullable=False),
        sa.Column("last_crash_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_job_crashes")),
    )


def downgrade() -> None:
    op.drop_table("job_crashes")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_message_id")
        batch.drop_column("delivered_free")
        batch.drop_column("end_reason")
