"""Eager sagas: a step row says which delivery runs its attempt in place of a message.

The index holds only the attempts in flight that a delivery carries; on PostgreSQL it is
built concurrently, so a large saga log keeps taking transitions while it builds.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

NAME = "ix_sagakit_steps_carried"
WHERE = "carrier IS NOT NULL AND status IN ('running', 'compensating')"


def upgrade() -> None:
    op.add_column("sagakit_steps", sa.Column("carrier", sa.String(200)))
    where = sa.text(WHERE)
    if op.get_context().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.create_index(
                NAME,
                "sagakit_steps",
                ["carrier"],
                postgresql_where=where,
                postgresql_concurrently=True,
            )
        return
    op.create_index(NAME, "sagakit_steps", ["carrier"], sqlite_where=where)


def downgrade() -> None:
    op.drop_index(NAME, table_name="sagakit_steps")
    op.drop_column("sagakit_steps", "carrier")
