"""effect ids of tool steps; when a run last made progress, and how often it was resumed

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stepwise_steps") as batch:
        batch.add_column(sa.Column("effect_id", sa.String(length=36), nullable=True))
    with op.batch_alter_table("stepwise_runs") as batch:
        batch.add_column(sa.Column("progressed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("resumes", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    op.execute("UPDATE stepwise_runs SET progressed_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("stepwise_runs") as batch:
        batch.drop_column("resumes")
        batch.drop_column("progressed_at")
    with op.batch_alter_table("stepwise_steps") as batch:
        batch.drop_column("effect_id")
