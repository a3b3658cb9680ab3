"""/api/sagas/{id}/events: a saga's transitions as Server-Sent Events until it settles.

Every event comes from the saga log and carries the id of its history entry, so a client
that reconnects with ``Last-Event-ID`` gets exactly the entries it missed. The Redis
Stream ``sagakit:events`` only rings the bell: when an entry for this saga appears there,
the log is read again (without Redis, or when the stream is unreachable, the log is read
every half second). Comment lines keep idle connections open through proxies.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from ...queries import transition_view
from ...system import System
from ..deps import SystemDep
from .sagas import ERRORS, SagaId

router = APIRouter(prefix="/api/sagas", tags=["sagas"])
POLL = 0.5
"""Seconds between reads of the log when no stream rings."""


class _Doorbell:
    """Waits until the event stream mentions a saga (or a timeout passes)."""

    def __init__(self, system: System, saga_id: str) -> None:
        settings = system.settings
        self.saga_id = saga_id
        self.stream = settings.events_stream
        self.client: Any = (
            aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
            if settings.redis_url
            else None
        )
        self.last = "$"

    async def arm(self) -> None:
        """Listen from the stream's newest entry on, before the log is first read.

        Waiting from ``$`` after a read would miss what was written during that read,
        and the stream would stall until the next entry or timeout.
        """
        if self.client is None:
            return
        try:
            newest: Any = await self.client.xrevrange(self.stream, count=1)
        except Exception:
            await self.close()  # the log alone will do, polled
            self.client = None
            return
        self.last = str(newest[0][0]) if newest else "0-0"

    async def wait(self, timeout: float) -> None:
        if self.client is None:
            await asyncio.sleep(POLL)
            return
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                block = max(1, int((deadline - time.monotonic()) * 1000))
                batches: Any = await self.client.xread({self.stream: self.last}, block=block)
                for _, messages in batches or ():
                    for message_id, fields in messages:
                        self.last = str(message_id)
                        if fields.get("saga_id") == self.saga_id:
                            return
        except Exception:
            await self.close()  # the log alone will do, polled
            self.client = None

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


async def _follow(
    system: System, saga_id: str, request: Request, after: int, max_seconds: float
) -> AsyncIterator[dict[str, Any]]:
    bell = _Doorbell(system, saga_id)
    queries = system.queries
    deadline = time.monotonic() + max_seconds
    try:
        await bell.arm()
        while True:
            # The status first: once it reads settled, the history read after it holds
            # every entry up to the end.
            record = await run_in_threadpool(queries.get, saga_id)
            rows = await run_in_threadpool(queries.history, saga_id, after=after)
            for row in rows:
                after = row.id
                yield {
                    "event": "transition",
                    "id": str(row.id),
                    "data": _json(transition_view(row)),
                }
            if record.state.status.settled or time.monotonic() >= deadline:
                yield {"event": "end", "data": _json({"id": saga_id, "status": record.status})}
                return
            if await request.is_disconnected():
                return
            await bell.wait(timeout=3.0)
    finally:
        await bell.close()


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


@router.get(
    "/{saga_id}/events",
    response_class=EventSourceResponse,
    responses={
        **ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": "`transition` events (their `id` is the history entry's), then "
            "one `end` event. Reconnect with `Last-Event-ID` to resume.",
        },
    },
)
async def saga_events(
    saga_id: SagaId,
    system: SystemDep,
    request: Request,
    last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0)] = None,
) -> EventSourceResponse:
    """Follow a saga: every transition as it happens, ending when the saga settles."""
    await run_in_threadpool(system.queries.get, saga_id)  # 404 before the stream starts
    settings = system.settings
    return EventSourceResponse(
        _follow(system, saga_id, request, last_event_id or 0, settings.sse_max_seconds),
        ping=settings.sse_ping_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
