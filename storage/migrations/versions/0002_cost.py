"""cost of model steps and runs

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stepwise_runs") as batch:
        batch.add_column(sa.Column("cost_usd", sa.Float(), nullable=True))
    with op.batch_alter_table("stepwise_steps") as batch:
        batch.add_column(sa.Column("cost_usd", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stepwise_steps") as batch:
        batch.drop_column("cost_usd")
    with op.batch_alter_table("stepwise_runs") as batch:
        batch.drop_column("cost_usd")
