"""Removing settled sagas from the saga log: in small batches, never what metrics still need.

A batch takes up to `batch` completed or compensated sagas that finished before the cutoff
and before the metrics watermark (their counts are folded, so /metrics does not go down),
locks them with ``SKIP LOCKED`` (a saga some transition holds is left for the next pass) and
deletes them; their step rows and history go with them (``ON DELETE CASCADE``). Each batch
is its own short transaction, so nothing waits long behind a prune. Failed sagas, which wait
for an operator, are never pruned.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import sqlalchemy as sa

from ..core.errors import InvalidInput
from . import schema as t

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str, field: str = "--older-than") -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds. Raises InvalidInput."""
    found = _DURATION.match(text)
    if found is None:
        raise InvalidInput(field, f"{text!r} is not an age like 30d, 12h, 90m or 3600")
    return timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])


def prune(
    db: sa.Engine, before: datetime, *, batch: int = 500, max_batches: int | None = None
) -> int:
    """Delete completed and compensated sagas that finished before `before`; how many."""
    s = t.sagas.c
    with db.connect() as conn:
        watermark = conn.execute(sa.select(t.metrics_state.c.watermark)).scalar()
    cutoff = min(before, watermark) if watermark is not None else before
    removed = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        with db.begin() as conn:
            ids = list(
                conn.execute(
                    sa.select(s.saga_id)
                    .where(
                        # Failed sagas wait for an operator: they are never pruned.
                        s.status.in_(("completed", "compensated")),
                        s.finished_at.is_not(None),
                        s.finished_at < cutoff,
                    )
                    .order_by(s.finished_at)
                    .limit(batch)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if not ids:
                break
            conn.execute(t.sagas.delete().where(s.saga_id.in_(ids)))
        removed += len(ids)
        batches += 1
        if len(ids) < batch:
            break
    return removed
