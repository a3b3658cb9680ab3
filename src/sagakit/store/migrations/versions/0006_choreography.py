"""Choreography: a saga the tracker folds from a Redis Stream is marked as choreographed.

The sweeper leaves such sagas alone (no Celery message is theirs to send or re-send); the
tracker owns their timeouts.

Revision ID: 0006
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on every dialect: SQLite's batch mode would copy the table and drop
    # the old one, and the drop would cascade to every saga's steps.
    op.add_column(
        "sagakit_sagas",
        sa.Column("choreographed", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("sagakit_sagas") as batch:
        batch.drop_column("choreographed")
