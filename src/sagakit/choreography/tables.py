"""The tables a participant keeps in its service's own database (not in the saga log).

- ``sagakit_inbox``: the events each service handled, by event id: a redelivered or
  republished event finds its row and is acknowledged without running its handler again;
- ``sagakit_outbox``: the events a handler emitted, written in the handler's transaction;
  the relay publishes them and marks them sent;
- ``sagakit_gathered``: parts of a join (one row per part), for a handler that acts once
  every part of a fan-out is in (`Local.gather`).

`ensure_tables` creates them; several processes may call it at once.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

Json = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

inbox = sa.Table(
    "sagakit_inbox",
    metadata,
    sa.Column("service", sa.String(64), primary_key=True),
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("event_type", sa.String(80), nullable=False),
    sa.Column("saga_id", sa.String(64), nullable=False),
    sa.Column("consumer", sa.String(200), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
)

outbox = sa.Table(
    "sagakit_outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("stream", sa.String(200), nullable=False),
    sa.Column("fields", Json, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Index(
        "ix_sagakit_outbox_unsent",
        "service",
        "id",
        sqlite_where=sa.text("sent_at IS NULL"),
        postgresql_where=sa.text("sent_at IS NULL"),
    ),
)

gathered = sa.Table(
    "sagakit_gathered",
    metadata,
    sa.Column("service", sa.String(64), primary_key=True),
    sa.Column("saga_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(80), primary_key=True),
    sa.Column("part", sa.String(80), primary_key=True),
    sa.Column("data", Json),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def ensure_tables(engine: sa.Engine) -> None:
    """Create the inbox, outbox and join tables in a service database if missing."""
    try:
        metadata.create_all(engine, checkfirst=True)
    except sa.exc.DBAPIError:
        names = set(sa.inspect(engine).get_table_names())
        if not {t.name for t in metadata.sorted_tables} <= names:
            raise
