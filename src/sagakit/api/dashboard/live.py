"""Live updates for the dashboard's pages, as Server-Sent Events.

A saga's page follows the same stream as ``GET /api/sagas/{id}/events`` (history entries
from the saga log, the Redis Stream only ringing the bell), behind the dashboard's session
instead of a bearer header, which EventSource cannot send. The list page gets a ``changed``
event at most once a second while any saga moves (once every few seconds without Redis); the
page then fetches its results again. Neither reads the database in a loop of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from ...core.inputs import check_saga_id
from ...system import System
from ..deps import SystemDep
from ..routes.events import _follow
from .session import viewer

router = APIRouter(include_in_schema=False)
QUIET = 1.0
"""Least seconds between two ``changed`` events of the list page."""
WITHOUT_REDIS = 5.0
"""Seconds between ``changed`` events when there is no stream to listen to."""
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _changes(system: System, request: Request) -> AsyncIterator[dict[str, Any]]:
    settings = system.settings
    client: Any = (
        aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        if settings.redis_url
        else None
    )
    deadline = time.monotonic() + settings.sse_max_seconds
    last = "$"
    try:
        while time.monotonic() < deadline and not await request.is_disconnected():
            if client is None:
                await asyncio.sleep(WITHOUT_REDIS)
                yield {"event": "changed", "data": "poll"}
                continue
            try:
                batches: Any = await client.xread({settings.events_stream: last}, block=3000)
            except Exception:
                await client.aclose()
                client = None  # the stream is out of reach: the slow tick will do
                continue
            for _, messages in batches or ():
                last = str(messages[-1][0])
            if batches:
                yield {"event": "changed", "data": last}
                await asyncio.sleep(QUIET)
    finally:
        if client is not None:
            await client.aclose()


@router.get("/live")
async def list_changes(request: Request, system: SystemDep) -> Response:
    """``changed`` whenever some saga moves (for the list page)."""
    if not viewer(request, system.settings).can_read:
        return Response("sign in first", status_code=401)
    return EventSourceResponse(
        _changes(system, request), ping=system.settings.sse_ping_seconds, headers=HEADERS
    )


@router.get("/sagas/{saga_id}/live")
async def saga_changes(
    saga_id: str, request: Request, system: SystemDep, after: int = 0
) -> Response:
    """The saga's transitions after history entry `after` (the page's last), until it settles."""
    if not viewer(request, system.settings).can_read:
        return Response("sign in first", status_code=401)
    check_saga_id(saga_id)
    await run_in_threadpool(system.queries.get, saga_id)  # 404 before the stream starts
    settings = system.settings
    return EventSourceResponse(
        _follow(system, saga_id, request, after, settings.sse_max_seconds),
        ping=settings.sse_ping_seconds,
        headers=HEADERS,
    )
