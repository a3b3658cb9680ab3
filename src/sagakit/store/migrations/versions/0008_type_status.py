"""Counts by status of one saga type read an index of their own.

On PostgreSQL the index is built concurrently, so a large saga log keeps taking
transitions while it builds.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

NAME = "ix_sagakit_sagas_type_status"
COLUMNS = ["saga_type", "status", "created_at"]


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(NAME, "sagakit_sagas", COLUMNS, postgresql_concurrently=True)
        return
    op.create_index(NAME, "sagakit_sagas", COLUMNS)


def downgrade() -> None:
    op.drop_index(NAME, table_name="sagakit_sagas")
