"""Exactly-once effects for at-least-once steps, in the service's own database.

A step's action or compensation may be delivered more than once (a redelivered message, a
retried attempt that had in fact committed). Wrap its local transaction in `once`: the key
is recorded in the same transaction as the work, so a repeat returns the first result
instead of doing the work again, and a concurrent duplicate fails on the primary key and
rolls back with its work.

The key table belongs to the service's database, not to the saga log: `ensure_table`
creates it there.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

T = TypeVar("T")

metadata = sa.MetaData()

idempotency_keys = sa.Table(
    "sagakit_idempotency_keys",
    metadata,
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("result", sa.JSON().with_variant(JSONB(), "postgresql")),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
"""One row per step key that took effect, with the result the step returned."""


def ensure_table(engine: sa.Engine) -> None:
    """Create the idempotency-key table in a service database if it is missing.

    Safe when several processes call it at once: one that loses the race to create the
    table finds it made by the other.
    """
    try:
        metadata.create_all(engine, checkfirst=True)
    except sa.exc.DBAPIError:
        if not sa.inspect(engine).has_table(idempotency_keys.name):
            raise


def once(conn: sa.Connection, key: str, work: Callable[[], T]) -> T | Any:
    """Run `work()` once per `key` inside the caller's open transaction.

    Returns the result of the first run (JSON-able) on every later call with the same key.
    """
    found = conn.execute(
        sa.select(idempotency_keys.c.result).where(idempotency_keys.c.key == key)
    ).first()
    if found is not None:
        return found[0]
    result = work()
    conn.execute(
        idempotency_keys.insert().values(key=key, result=result, created_at=datetime.now(UTC))
    )
    return result
