"""runs carry their job's fingerprint, indexed, so history lookups no longer scan every queued job

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 15:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))
    op.execute("UPDATE runs SET fingerprint = (SELECT jobs.fingerprint FROM jobs WHERE jobs.id = runs.job_id)")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_fingerprint", ["fingerprint", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_fingerprint")
        batch_op.drop_column("fingerprint")
