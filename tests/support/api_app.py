"""The embedded API app for HTTP tests: SQLite file, in-process worker, lifespan running."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import Settings
from sagakit.api import create_app
from sagakit.settings import EMBEDDED_BROKER
from sagakit_examples.slam import databases

with warnings.catch_warnings():
    # Starlette's test client prefers httpx2 and says so once, at import time.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
    from fastapi.testclient import TestClient

__all__ = ["TestClient", "embedded_settings", "running_client"]


def embedded_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings of an embedded app running the SLAM example."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "broker_url": EMBEDDED_BROKER,
        "redis_url": None,
        "imports": ["sagakit_examples.slam"],
        "sweep_interval": 0.2,
        "sse_max_seconds": 30,
        **overrides,
    }
    return Settings(**values)


def running_client(tmp_path: Path, **overrides: Any) -> Iterator[TestClient]:
    """An embedded app on a SQLite file in `tmp_path`, its lifespan running.

    The SLAM services share the saga log's database, as they do by default.
    """
    url = f"sqlite:///{tmp_path}/api.db"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SAGAKIT_DATABASE_URL", url)
        env.setenv("SLAM_OUTPUT_DIR", str(tmp_path))
        databases.reset()  # the services read their settings anew
        try:
            with TestClient(create_app(embedded_settings(url, **overrides))) as client:
                yield client
        finally:
            databases.reset()
