"""who owns a run and a thread (the HTTP API shows a run only to its owner)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stepwise_threads") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=200), nullable=True))
    with op.batch_alter_table("stepwise_runs") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=200), nullable=True))
        batch.create_index("ix_stepwise_runs_owner", ["owner"])


def downgrade() -> None:
    with op.batch_alter_table("stepwise_runs") as batch:
        batch.drop_index("ix_stepwise_runs_owner")
        batch.drop_column("owner")
    with op.batch_alter_table("stepwise_threads") as batch:
        batch.drop_column("owner")
