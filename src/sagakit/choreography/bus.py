"""The event bus: one Redis Stream, a consumer group per service, a dead-letter stream.

An entry is acknowledged only once its handler's effects are committed. One left pending
by a consumer that died (or whose handler raised) is claimed by a live consumer of the same
group once it has been idle for `claim_idle` seconds (``XAUTOCLAIM``); one delivered
`max_deliveries` times without success goes to ``<stream>:dead`` with its last error, and is
acknowledged. The stream is trimmed by ``MINID`` to the oldest entry some group still
needs (pending, or not yet delivered), approximately, so memory stays bounded.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from ..core.errors import SagaError
from .events import SagaEvent

logger = logging.getLogger(__name__)

_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")

Entry = tuple[str, dict[Any, Any]]
"""A stream entry: its id and its fields."""


class DeadLetterNotFound(SagaError):
    """No dead letter with that id (replayed already, or never one)."""

    def __init__(self, dead_id: str) -> None:
        super().__init__(f"no dead letter {dead_id!r}")
        self.dead_id = dead_id


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a group gave up on, with why."""

    id: str
    group: str
    error: str
    deliveries: int
    event: dict[str, str]

    def view(self) -> dict[str, Any]:
        """As the CLI and the API show it."""
        return {
            "id": self.id,
            "group": self.group,
            "error": self.error,
            "deliveries": self.deliveries,
            "event": self.event,
        }


class Bus:
    """The stream of one choreography, as its consumers and publishers use it."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        *,
        claim_idle: float = 30.0,
        max_deliveries: int = 5,
        block: float = 1.0,
    ) -> None:
        self.client = client
        self.stream = stream
        self.dead = f"{stream}:dead"
        self.claim_idle = claim_idle
        self.max_deliveries = max_deliveries
        self.block = block

    @classmethod
    def from_url(cls, url: str, stream: str, **options: Any) -> Bus:
        """Connect with timeouts a blocking read fits in."""
        block = float(options.get("block", 1.0))
        client = redis.Redis.from_url(url, socket_timeout=block + 5.0, socket_connect_timeout=2.0)
        return cls(client, stream, **options)

    def _errors(self, group: str) -> str:
        return f"{self.stream}:errors:{group}"

    # --- publishing -------------------------------------------------------------------

    def publish(self, events: Iterable[SagaEvent | dict[str, str]]) -> list[str]:
        """XADD events in one round trip; their entry ids."""
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            fields = event.fields() if isinstance(event, SagaEvent) else event
            pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
        return [_text(i) for i in pipe.execute()]

    # --- consuming --------------------------------------------------------------------

    def ensure_group(self, group: str) -> None:
        """Create `group` (and the stream) if missing; a new group reads from the start."""
        try:
            self.client.xgroup_create(self.stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, group: str, consumer: str, count: int = 10) -> list[Entry]:
        """New entries for `consumer`, waiting up to `block` seconds for some."""
        try:
            block = int(self.block * 1000) if self.block > 0 else None  # None: do not wait
            reply: Any = self.client.xreadgroup(
                group, consumer, {self.stream: ">"}, count=count, block=block
            )
        except redis.ResponseError as exc:
            if not _group_missing(exc):
                raise
            # The stream or the group is gone (Redis restarted without persistence).
            logger.warning("consumer group %s missing on %s: created again", group, self.stream)
            self.ensure_group(group)
            return []
        entries: list[Entry] = []
        for _, items in reply or []:
            entries += [(_text(i), f) for i, f in items if f]
        return entries

    def reclaim(self, group: str, consumer: str, count: int = 10) -> list[tuple[Entry, int]]:
        """Entries pending in `group` idle for `claim_idle` seconds, now `consumer`'s, each
        with its delivery count (this delivery included)."""
        try:
            reply = self.client.xautoclaim(
                self.stream, group, consumer, int(self.claim_idle * 1000), "0-0", count=count
            )
        except redis.ResponseError as exc:
            if not _group_missing(exc):
                raise
            self.ensure_group(group)
            return []
        claimed = [(_text(i), f) for i, f in reply[1] if f]
        if not claimed:
            return []
        counts = self.deliveries(group, [i for i, _ in claimed])
        return [((i, f), counts.get(i, 1)) for i, f in claimed]

    def deliveries(self, group: str, ids: Sequence[str]) -> dict[str, int]:
        """How often each pending entry was delivered to `group`."""
        pipe = self.client.pipeline(transaction=False)
        for i in ids:
            pipe.xpending_range(self.stream, group, min=i, max=i, count=1)
        found: dict[str, int] = {}
        for rows in pipe.execute():
            for row in rows:
                found[_text(row["message_id"])] = int(row["times_delivered"])
        return found

    def ack(self, group: str, entry_id: str) -> None:
        """Acknowledge an entry, forgetting its last error."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.stream, group, entry_id)
        pipe.hdel(self._errors(group), entry_id)
        pipe.execute()

    def note_error(self, group: str, entry_id: str, error: str) -> None:
        """Keep a handler's error, for the dead letter should the entry end there."""
        self.client.hset(self._errors(group), entry_id, error[:2000])

    def dead_letter(self, group: str, entry: Entry, deliveries: int, error: str = "") -> str:
        """Move an entry of `group` to the dead-letter stream and acknowledge it."""
        entry_id, fields = entry
        error = error or _text(self.client.hget(self._errors(group), entry_id) or b"")
        record = {
            "group": group,
            "entry": entry_id,
            "error": error or "unknown (the consumer died while handling it)",
            "deliveries": str(deliveries),
            "event": json.dumps({_text(k): _text(v) for k, v in fields.items()}),
        }
        dead_id = _text(self.client.xadd(self.dead, record))  # type: ignore[arg-type]
        self.ack(group, entry_id)
        logger.warning(
            "event %s dead-lettered for %s after %d deliveries: %s",
            entry_id,
            group,
            deliveries,
            record["error"],
        )
        return dead_id

    # --- dead letters -----------------------------------------------------------------

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """The dead letters, oldest first."""
        rows: Any = self.client.xrange(self.dead, count=count)
        return [_dead(i, f) for i, f in rows]

    def replay(self, dead_id: str) -> str:
        """Publish a dead letter's event again and drop the dead letter; the new entry's id.
        Raises DeadLetterNotFound.

        Every group receives it again; those that handled it find it in their inbox. Its
        deliveries carry on from where they stopped (``replayed`` field).
        """
        if not _ENTRY_ID.match(dead_id):
            raise DeadLetterNotFound(dead_id)
        found: Any = self.client.xrange(self.dead, min=dead_id, max=dead_id, count=1)
        if not found:
            raise DeadLetterNotFound(dead_id)
        letter = _dead(*found[0])
        fields = dict(letter.event)
        fields["replayed"] = str(int(fields.get("replayed", "0") or 0) + letter.deliveries)
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
        pipe.xdel(self.dead, dead_id)
        new_id, _ = pipe.execute()
        return _text(new_id)

    # --- memory -----------------------------------------------------------------------

    def trim(self) -> int:
        """Trim the stream (``MINID``, approximate) below what every group still needs: its
        oldest pending entry, else its last delivered one. Returns entries removed."""
        try:
            groups = self.client.xinfo_groups(self.stream)
        except redis.ResponseError:
            return 0  # no stream yet
        if not groups:
            return 0
        floors = []
        for g in groups:
            floor = _text(g["last-delivered-id"])
            if int(g.get("pending", 0)):
                summary = self.client.xpending(self.stream, _text(g["name"]))
                if summary.get("min"):  # None if acknowledged meanwhile
                    floor = min(floor, _text(summary["min"]), key=_order)
            floors.append(floor)
        return int(self.client.xtrim(self.stream, minid=min(floors, key=_order), approximate=True))


def _group_missing(exc: redis.ResponseError) -> bool:
    """Redis says NOGROUP; the in-process stream (fakeredis) that the key must exist."""
    text = str(exc)
    return "NOGROUP" in text or "requires the key to exist" in text


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _dead(entry_id: Any, fields: dict[Any, Any]) -> DeadLetter:
    text = {_text(k): _text(v) for k, v in fields.items()}
    try:
        event = json.loads(text.get("event", "{}"))
    except ValueError:
        event = {}
    return DeadLetter(
        _text(entry_id),
        text.get("group", ""),
        text.get("error", ""),
        int(text.get("deliveries", "0") or 0),
        event if isinstance(event, dict) else {},
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
