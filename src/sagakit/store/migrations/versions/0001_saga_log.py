"""The saga log: sagas, step attempts, transitions, outbox, idempotency keys.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from sagakit.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sagakit_sagas",
        sa.Column("saga_id", sa.String(64), primary_key=True),
        sa.Column("saga_type", sa.String(64), nullable=False),
        sa.Column("definition_version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("input", Json, nullable=False),
        sa.Column("state", Json, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("failed_step", sa.String(80)),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("deadline_at", UTCDateTime),
        sa.UniqueConstraint("saga_type", "idempotency_key", name="uq_sagakit_sagas_idempotency"),
    )
    op.create_index("ix_sagakit_sagas_status_created", "sagakit_sagas", ["status", "created_at"])
    op.create_index("ix_sagakit_sagas_created", "sagakit_sagas", ["created_at"])
    op.create_index("ix_sagakit_sagas_deadline", "sagakit_sagas", ["deadline_at"])
    op.create_table(
        "sagakit_step_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "saga_id",
            sa.String(64),
            sa.ForeignKey("sagakit_sagas.saga_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("step", sa.String(80), nullable=False),
        sa.Column("direction", sa.String(12), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("task_id", sa.String(200), nullable=False, unique=True),
        sa.Column("task_name", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("worker", sa.String(200)),
        sa.Column("input", Json),
        sa.Column("output", Json),
        sa.Column("error", sa.Text),
        sa.Column("traceback", sa.Text),
        sa.Column("timeout", sa.Float),
        sa.Column("scheduled_at", UTCDateTime, nullable=False),
        sa.Column("not_before", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("deadline_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
    )
    op.create_index("ix_sagakit_step_attempts_saga", "sagakit_step_attempts", ["saga_id", "id"])
    op.create_index(
        "ix_sagakit_step_attempts_status_deadline",
        "sagakit_step_attempts",
        ["status", "deadline_at"],
    )
    op.create_table(
        "sagakit_transitions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "saga_id",
            sa.String(64),
            sa.ForeignKey("sagakit_sagas.saga_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("from_status", sa.String(20)),
        sa.Column("to_status", sa.String(20)),
        sa.Column("step", sa.String(80)),
        sa.Column("attempt", sa.Integer),
        sa.Column("detail", Json),
        sa.Column("at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_sagakit_transitions_saga", "sagakit_transitions", ["saga_id", "id"])
    op.create_table(
        "sagakit_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("saga_id", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(200), nullable=False, unique=True),
        sa.Column("task_name", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("kwargs", Json, nullable=False),
        sa.Column("time_limit", sa.Float),
        sa.Column("not_before", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime),
        sa.Column("send_count", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_sagakit_outbox_due", "sagakit_outbox", ["sent_at", "not_before"])
    # A service sharing this database may have created it already (sagakit.idempotency).
    if not sa.inspect(op.get_bind()).has_table("sagakit_idempotency_keys"):
        _create_idempotency_keys()


def _create_idempotency_keys() -> None:
    op.create_table(
        "sagakit_idempotency_keys",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("result", Json),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "sagakit_idempotency_keys",
        "sagakit_outbox",
        "sagakit_transitions",
        "sagakit_step_attempts",
        "sagakit_sagas",
    ):
        op.drop_table(table)
