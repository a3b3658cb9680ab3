"""An API app served by uvicorn on a real port, in a thread, and an SSE reader for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from sagakit.api import create_app
from sagakit_examples.slam import databases
from tests.support.api_app import embedded_settings
from tests.support.cluster import wait_for
from tests.support.redis_server import free_port


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve `app` (its lifespan running) on 127.0.0.1; yield its base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 60, "uvicorn to start")
        assert thread.is_alive(), "uvicorn stopped while starting"
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "uvicorn did not stop"


@contextmanager
def embedded_server(tmp_path: Path, **overrides: Any) -> Iterator[str]:
    """The embedded app (SQLite file, in-process worker, SLAM example) on a real port."""
    url = f"sqlite:///{tmp_path}/api.db"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SAGAKIT_DATABASE_URL", url)
        env.setenv("SLAM_OUTPUT_DIR", str(tmp_path))
        databases.reset()  # the services read their settings anew
        try:
            with serve(create_app(embedded_settings(url, **overrides))) as base:
                yield base
        finally:
            databases.reset()


@dataclass
class Event:
    """One server-sent event, or one comment line (`comment` set, the rest empty)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    comment: str | None = None
    at: float = 0.0


class EventStream:
    """Reads a `text/event-stream` response as events and comments, as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def __iter__(self) -> Iterator[Event]:
        fields: dict[str, str] = {}
        for line in self._lines:
            if line.startswith(":"):
                yield Event(comment=line[1:].strip(), at=time.monotonic())
                continue
            if line == "":
                if fields:
                    yield Event(
                        event=fields.get("event", "message"),
                        data=fields.get("data", ""),
                        id=fields.get("id"),
                        at=time.monotonic(),
                    )
                fields = {}
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = (
                f"{fields[name]}\n{value}" if name == "data" and name in fields else value
            )
        # An event the stream ended in the middle of is dropped, as EventSource drops it.
