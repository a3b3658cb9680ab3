"""Keys: the saga log's secret that seals the state a step message carries.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from sagakit.store.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sagakit_keys",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sagakit_keys")
