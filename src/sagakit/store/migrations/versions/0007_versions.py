"""Versions: each worker's heartbeat says which definition versions it can advance.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from sagakit.store.schema import Json

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sagakit_workers", sa.Column("definitions", Json))


def downgrade() -> None:
    op.drop_column("sagakit_workers", "definitions")
