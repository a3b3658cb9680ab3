"""Worker heartbeats: attempts held by a worker that died are timed out early.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from sagakit.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sagakit_workers",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("beat_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sagakit_workers")
