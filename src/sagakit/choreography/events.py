"""A choreography's events as they travel on the stream, and as a consumer receives them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class BadEvent(ValueError):
    """A stream entry that is not a choreography event (a field is missing or malformed)."""


def new_event_id() -> str:
    """A fresh event id: what inboxes deduplicate on."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class SagaEvent:
    """One fact of a choreographed saga: ``robots_allocated`` for saga ``ab12``, with data.

    `id` is the event's identity: publishing it twice (a relay that crashed after XADD)
    or replaying it from the dead letters yields the same id, so each inbox handles it once.
    """

    type: str
    saga_id: str
    saga_type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_event_id)
    source: str = ""
    """The consumer whose handler emitted it (``robots@host:pid``), for the timeline."""
    started_at: str = ""
    """When that handler began (ISO 8601), for the timeline."""

    def fields(self) -> dict[str, str]:
        """The stream entry's fields."""
        fields = {
            "id": self.id,
            "type": self.type,
            "saga_id": self.saga_id,
            "saga_type": self.saga_type,
            "data": json.dumps(self.data, separators=(",", ":")),
        }
        if self.source:
            fields["source"] = self.source
        if self.started_at:
            fields["started_at"] = self.started_at
        return fields

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> SagaEvent:
        """From a stream entry's fields (bytes or text). Raises BadEvent naming the field."""
        text = {_text(k): _text(v) for k, v in raw.items()}
        for name in ("id", "type", "saga_id", "saga_type", "data"):
            if not text.get(name):
                raise BadEvent(f"field {name!r} is missing")
        try:
            data = json.loads(text["data"])
        except ValueError as exc:
            raise BadEvent(f"field 'data' is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise BadEvent("field 'data' must be a JSON object")
        return cls(
            text["type"],
            text["saga_id"],
            text["saga_type"],
            data,
            text["id"],
            text.get("source", ""),
            text.get("started_at", ""),
        )

    @property
    def started(self) -> datetime | None:
        """`started_at` as a time, if it reads as one."""
        try:
            return datetime.fromisoformat(self.started_at) if self.started_at else None
        except ValueError:
            return None

    @property
    def steps(self) -> tuple[str, ...]:
        """The step instances the event reports on (``data.steps``), if it names any."""
        steps = self.data.get("steps")
        return tuple(str(s) for s in steps) if isinstance(steps, list) else ()

    @property
    def input(self) -> Mapping[str, Any]:
        """The saga's input, which every event of the saga carries."""
        value = self.data.get("input")
        return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event as one consumer received it: which entry, and which delivery of it."""

    message_id: str
    event: SagaEvent
    attempt: int = 1
    """Deliveries of this event to this group so far, this one included (replays count on)."""
