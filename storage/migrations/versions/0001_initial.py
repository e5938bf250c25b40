"""runs, steps, events, threads and messages

Revision ID: 0001
Revises: none
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('stepwise_threads',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('stepwise_runs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('agent', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('input', sa.Text(), nullable=False),
    sa.Column('thread_id', sa.String(length=200), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('result', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('last_seq', sa.Integer(), nullable=False),
    sa.Column('usage', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['thread_id'], ['stepwise_threads.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key')
    )
    with op.batch_alter_table('stepwise_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stepwise_runs_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_stepwise_runs_thread_id'), ['thread_id'], unique=False)

    op.create_table('stepwise_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('step', sa.Integer(), nullable=True),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['stepwise_runs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'seq', name='uq_event_seq')
    )
    with op.batch_alter_table('stepwise_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stepwise_events_run_id'), ['run_id'], unique=False)

    op.create_table('stepwise_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('thread_id', sa.String(length=200), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('parts', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['stepwise_runs.id'], ),
    sa.ForeignKeyConstraint(['thread_id'], ['stepwise_threads.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('thread_id', 'position', name='uq_message_position')
    )
    with op.batch_alter_table('stepwise_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stepwise_messages_thread_id'), ['thread_id'], unique=False)

    op.create_table('stepwise_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('call_id', sa.String(length=200), nullable=True),
    sa.Column('tool_name', sa.String(length=200), nullable=True),
    sa.Column('arguments', sa.Text(), nullable=True),
    sa.Column('output', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('usage', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('queue', sa.String(length=200), nullable=True),
    sa.Column('task_id', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['stepwise_runs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'number', name='uq_step_number')
    )
    with op.batch_alter_table('stepwise_steps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stepwise_steps_run_id'), ['run_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('stepwise_steps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stepwise_steps_run_id'))

    op.drop_table('stepwise_steps')
    with op.batch_alter_table('stepwise_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stepwise_messages_thread_id'))

    op.drop_table('stepwise_messages')
    with op.batch_alter_table('stepwise_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stepwise_events_run_id'))

    op.drop_table('stepwise_events')
    with op.batch_alter_table('stepwise_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stepwise_runs_thread_id'))
        batch_op.drop_index(batch_op.f('ix_stepwise_runs_status'))

    op.drop_table('stepwise_runs')
    op.drop_table('stepwise_threads')
