"""The saga log's tables (SQLAlchemy Core), one schema for SQLite and PostgreSQL.

- ``sagakit_sagas``: one row per saga, its input (written once) and its head (a few
  counters and words, the same size however large the saga); ``choreographed`` marks a
  saga the choreography tracker folds from its events (`sagakit.choreography`);
- ``sagakit_steps``: one row per step instance: its state, its output (stored once, here),
  and the message of its current attempt (the outbox: sent or not, how often);
- ``sagakit_transitions``: the append-only history, where every attempt's story is kept;
- ``sagakit_workers``: heartbeats, with the tasks each worker holds;
- ``sagakit_metrics`` and ``sagakit_metrics_state``: counters folded from the history, so a
  scrape reads a few rows however long the log;
- ``sagakit_keys``: the secret that seals the saga state a step message carries.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

Json = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


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


ACTIVE = "status IN ('pending', 'running', 'compensating')"
BUSY = "status IN ('running', 'compensating')"

sagas = sa.Table(
    "sagakit_sagas",
    metadata,
    sa.Column("saga_id", sa.String(64), primary_key=True),
    sa.Column("saga_type", sa.String(64), nullable=False),
    sa.Column("definition_version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("input", Json, nullable=False),
    sa.Column("idempotency_key", sa.String(200)),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("pivot_passed", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("failed_step", sa.String(80)),
    sa.Column("cause", sa.Text),
    sa.Column("cause_step", sa.String(80)),
    sa.Column("open_steps", sa.Integer, nullable=False),
    sa.Column("busy_steps", sa.Integer, nullable=False),
    sa.Column("sources", Json),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("deadline_at", UTCDateTime),
    sa.Column("choreographed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("saga_type", "idempotency_key", name="uq_sagakit_sagas_idempotency"),
    sa.Index("ix_sagakit_sagas_created", "created_at", "saga_id"),
    sa.Index("ix_sagakit_sagas_status_created", "status", "created_at", "saga_id"),
    sa.Index("ix_sagakit_sagas_type_created", "saga_type", "created_at", "saga_id"),
    # Counts by status of one type (the dashboard): a status changes twice in a saga's
    # life, so the transitions between keep their HOT updates.
    sa.Index("ix_sagakit_sagas_type_status", "saga_type", "status", "created_at"),
    sa.Index(
        "ix_sagakit_sagas_key",
        "idempotency_key",
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    ),
    sa.Index(
        "ix_sagakit_sagas_finished",
        "finished_at",
        sqlite_where=sa.text("finished_at IS NOT NULL"),
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    ),
    sa.Index(
        "ix_sagakit_sagas_deadline",
        "deadline_at",
        sqlite_where=sa.text("deadline_at IS NOT NULL AND status IN ('pending', 'running')"),
        postgresql_where=sa.text("deadline_at IS NOT NULL AND status IN ('pending', 'running')"),
    ),
    # A transition rewrites a few words of the head: leave room on each page for
    # PostgreSQL to update the row in place (a HOT update, no index writes).
    postgresql_with={"fillfactor": 70},
)

steps = sa.Table(
    "sagakit_steps",
    metadata,
    sa.Column(
        "saga_id",
        sa.String(64),
        sa.ForeignKey("sagakit_sagas.saga_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("name", sa.String(80), primary_key=True),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("idx", sa.Integer),
    sa.Column("item", Json),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("attempt_base", sa.Integer, nullable=False),
    sa.Column("comp_attempt", sa.Integer, nullable=False),
    sa.Column("comp_base", sa.Integer, nullable=False),
    sa.Column("ord", sa.Integer),
    sa.Column("maybe_effect", sa.Boolean, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("output", Json),
    sa.Column("task_id", sa.String(200), nullable=False),
    sa.Column("task_name", sa.String(200), nullable=False),
    sa.Column("queue", sa.String(100), nullable=False),
    sa.Column("not_before", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime),
    sa.Column("send_count", sa.Integer, nullable=False),
    # The delivery that runs this attempt where it is (an eager saga's next step): held
    # while that delivery's task is.
    sa.Column("carrier", sa.String(200)),
    sa.Index(
        "ix_sagakit_steps_undo",
        "saga_id",
        "ord",
        sqlite_where=sa.text("ord IS NOT NULL"),
        postgresql_where=sa.text("ord IS NOT NULL"),
    ),
    sa.Index(
        "ix_sagakit_steps_unsent",
        "not_before",
        sqlite_where=sa.text(f"sent_at IS NULL AND {BUSY}"),
        postgresql_where=sa.text(f"sent_at IS NULL AND {BUSY}"),
    ),
    sa.Index(
        "ix_sagakit_steps_busy",
        "sent_at",
        sqlite_where=sa.text(BUSY),
        postgresql_where=sa.text(BUSY),
    ),
    # The attempts a delivery runs where it is (eager sagas), for the sweeper to time out
    # or take over with it: only those in flight.
    sa.Index(
        "ix_sagakit_steps_carried",
        "carrier",
        sqlite_where=sa.text(f"carrier IS NOT NULL AND {BUSY}"),
        postgresql_where=sa.text(f"carrier IS NOT NULL AND {BUSY}"),
    ),
    postgresql_with={"fillfactor": 80},
)

transitions = sa.Table(
    "sagakit_transitions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
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
    sa.Column("started_at", UTCDateTime),
    sa.Index("ix_sagakit_transitions_saga", "saga_id", "id"),
    sa.Index(
        "ix_sagakit_transitions_outcomes",
        "at",
        sqlite_where=sa.text("started_at IS NOT NULL"),
        postgresql_where=sa.text("started_at IS NOT NULL"),
    ),
)

workers = sa.Table(
    "sagakit_workers",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("beat_at", UTCDateTime, nullable=False),
    sa.Column("running", Json),
    sa.Column("reserved", Json),
    sa.Column("definitions", Json),
)
"""Heartbeats of live workers, with the task ids each runs and holds (a worker that stops
beating has lost them) and the definitions it can advance, ``[[saga type, version], ...]``
(a saga whose version no live worker lists is not deployed)."""

metrics = sa.Table(
    "sagakit_metrics",
    metadata,
    sa.Column("kind", sa.String(20), primary_key=True),
    sa.Column("saga_type", sa.String(64), primary_key=True),
    sa.Column("step", sa.String(64), primary_key=True),
    sa.Column("direction", sa.String(12), primary_key=True),
    sa.Column("status", sa.String(20), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("total", sa.Float, nullable=False),
    sa.Column("buckets", Json),
)
"""Counters and histograms folded from the log up to the watermark (`store.stats`)."""

metrics_state = sa.Table(
    "sagakit_metrics_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("watermark", UTCDateTime, nullable=False),
)
"""The one row saying up to when the metrics table holds the log's counts."""

keys = sa.Table(
    "sagakit_keys",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
"""Secrets made on first use and kept with the log (``state``: `messages.seal`'s key): only
who can read the saga log knows them."""
