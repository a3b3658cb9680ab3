"""The saga log's tables (SQLAlchemy Core), one schema for SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

Json = sa.JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


sagas = sa.Table(
    "sagakit_sagas",
    metadata,
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
    sa.Index("ix_sagakit_sagas_status_created", "status", "created_at"),
    sa.Index("ix_sagakit_sagas_created", "created_at"),
    sa.Index("ix_sagakit_sagas_deadline", "deadline_at"),
)

step_attempts = sa.Table(
    "sagakit_step_attempts",
    metadata,
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
    sa.Index("ix_sagakit_step_attempts_saga", "saga_id", "id"),
    sa.Index("ix_sagakit_step_attempts_status_deadline", "status", "deadline_at"),
)

transitions = sa.Table(
    "sagakit_transitions",
    metadata,
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
    sa.Index("ix_sagakit_transitions_saga", "saga_id", "id"),
)

outbox = sa.Table(
    "sagakit_outbox",
    metadata,
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
    sa.Index("ix_sagakit_outbox_due", "sent_at", "not_before"),
)

workers = sa.Table(
    "sagakit_workers",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("beat_at", UTCDateTime, nullable=False),
)
"""Heartbeats of live workers: a worker that stops beating has lost its running attempts."""

idempotency_keys = sa.Table(
    "sagakit_idempotency_keys",
    metadata,
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("result", Json),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
"""Lives in each service's own database: see `sagakit.idempotency`."""
