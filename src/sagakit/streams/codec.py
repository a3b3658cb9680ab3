"""History entries <-> stream fields, both halves in one place."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..journal import Entry


def encode(entry: Entry) -> dict[str, str]:
    """Flatten one history entry into stream fields (the traceback stays in the log)."""
    detail = {k: v for k, v in (entry.detail or {}).items() if k != "traceback"}
    return {
        "saga_id": entry.saga_id,
        "event": entry.event,
        "step": entry.step or "",
        "attempt": "" if entry.attempt is None else str(entry.attempt),
        "from": entry.from_status or "",
        "status": entry.to_status or "",
        "at": entry.at.isoformat(),
        "detail": json.dumps(detail, default=str),
    }


def decode(fields: Mapping[str, str]) -> dict[str, Any]:
    """A stream entry as the API's transition view (without the log's entry id)."""
    return {
        "event": fields["event"],
        "step": fields.get("step") or None,
        "attempt": int(fields["attempt"]) if fields.get("attempt") else None,
        "from": fields.get("from") or None,
        "to": fields.get("status") or None,
        "at": fields.get("at") or None,
        "detail": json.loads(fields.get("detail") or "{}") or None,
    }
