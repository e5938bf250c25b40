"""the ticks of beat schedules: one row per schedule and tick, so a tick starts one run

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stepwise_schedule_ticks",
        sa.Column("schedule", sa.String(length=100), nullable=False),
        sa.Column("tick", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.String(length=36), sa.ForeignKey("stepwise_runs.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("schedule", "tick"),
    )
    op.create_index("ix_stepwise_schedule_ticks_run_id", "stepwise_schedule_ticks", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_stepwise_schedule_ticks_run_id", "stepwise_schedule_ticks")
    op.drop_table("stepwise_schedule_ticks")
