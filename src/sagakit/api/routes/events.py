"""/api/sagas/{id}/events: a saga's transitions as Server-Sent Events until it settles.

The history so far comes from the saga log; what follows comes from the Redis Stream
``sagakit:events`` (or, without Redis, from polling the log). The stream is best effort, so
the log is checked every few seconds too: a lost stream entry delays an event, never drops
it, and the stream ends once the saga is settled.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ...core.machine import SETTLED_STATUSES
from ...system import System
from ...views import transition_view
from ..deps import SystemDep
from .sagas import ERRORS, SagaId

router = APIRouter(prefix="/api/sagas", tags=["sagas"])


def _key(entry: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        entry["event"],
        entry.get("step") or "",
        str(entry.get("attempt") or ""),
        entry.get("at") or "",
    )


def _sse(entry: dict[str, Any], name: str = "transition") -> bytes:
    return f"event: {name}\ndata: {json.dumps(entry, default=str)}\n\n".encode()


class _Follower:
    """Emits each transition once, whichever source it came from."""

    def __init__(self, system: System, saga_id: str) -> None:
        self.system = system
        self.saga_id = saga_id
        self.seen: set[tuple[str, str, str, str]] = set()
        self.last_row = 0

    async def from_log(self) -> tuple[list[dict[str, Any]], bool]:
        engine = self.system.engine
        rows = await run_in_threadpool(engine.store.history, self.saga_id, after=self.last_row)
        record = await run_in_threadpool(engine.get, self.saga_id)
        fresh = []
        for row in rows:
            self.last_row = row.id
            entry = transition_view(row)
            if _key(entry) not in self.seen:
                self.seen.add(_key(entry))
                fresh.append(entry)
        return fresh, record.status in SETTLED_STATUSES

    def from_stream(self, fields: dict[str, str]) -> dict[str, Any] | None:
        if fields.get("saga_id") != self.saga_id:
            return None
        entry = {
            "event": fields["event"],
            "step": fields.get("step") or None,
            "attempt": int(fields["attempt"]) if fields.get("attempt") else None,
            "from": fields.get("from") or None,
            "to": fields.get("status") or None,
            "at": fields.get("at") or None,
            "detail": json.loads(fields.get("detail") or "{}"),
        }
        if _key(entry) in self.seen:
            return None
        self.seen.add(_key(entry))
        return entry


async def _follow(
    system: System, saga_id: str, request: Request, max_seconds: float
) -> AsyncIterator[bytes]:
    follower = _Follower(system, saga_id)
    settings = system.settings
    client = (
        aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        if settings.redis_url
        else None
    )
    try:
        last_id = "0-0"
        if client is not None:
            try:
                newest: Any = await client.xrevrange(settings.events_stream, count=1)
                last_id = str(newest[0][0]) if newest else "0-0"
            except Exception:
                client = None
        entries, settled = await follower.from_log()
        for entry in entries:
            yield _sse(entry)
        deadline = time.monotonic() + max_seconds
        next_check = time.monotonic() + 3.0
        while not settled and time.monotonic() < deadline:
            if await request.is_disconnected():
                return
            if client is not None:
                batches: Any = []
                try:
                    batches = await client.xread(
                        {settings.events_stream: last_id}, block=1000, count=200
                    )
                except Exception:
                    client = None
                for _, messages in batches:
                    for message_id, fields in messages:
                        last_id = str(message_id)
                        streamed = follower.from_stream(fields)
                        if streamed is not None:
                            yield _sse(streamed)
                            settled |= (
                                streamed["event"].startswith("saga_")
                                and streamed["to"] in SETTLED_STATUSES
                            )
            else:
                await asyncio.sleep(0.5)
            if settled or client is None or time.monotonic() >= next_check:
                next_check = time.monotonic() + 3.0
                entries, settled = await follower.from_log()
                for entry in entries:
                    yield _sse(entry)
        record = await run_in_threadpool(system.engine.get, saga_id)
        yield _sse({"id": saga_id, "status": record.status}, "end")
    finally:
        if client is not None:
            await client.aclose()


@router.get(
    "/{saga_id}/events",
    response_class=StreamingResponse,
    responses={
        **ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": "`transition` events, then one `end` event.",
        },
    },
)
async def saga_events(saga_id: SagaId, system: SystemDep, request: Request) -> StreamingResponse:
    """Follow a saga: every transition as it happens, ending when the saga settles."""
    await run_in_threadpool(system.engine.get, saga_id)  # 404 before the stream starts
    return StreamingResponse(
        _follow(system, saga_id, request, system.settings.sse_max_seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
