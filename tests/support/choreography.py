"""Choreographed SLAM missions on participant processes: the rig the tests share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sagakit import Settings
from sagakit.choreography import Choreography
from sagakit.queries import Queries
from sagakit.store import make_db
from sagakit.store.db import Pooled

TIMEOUT = 10.0
"""The tracker's step timeout of a rig (SAGAKIT_CHOREOGRAPHY_TIMEOUT)."""
SAGAKIT = str(Path(sys.executable).with_name("sagakit"))


def until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def rig_env(
    database_url: str, redis_url: str, stream: str, maps: Path, timeout: float = TIMEOUT
) -> dict[str, str]:
    """Short claim, read and timeout settings, as every process of a rig shares them."""
    return {
        "SAGAKIT_DATABASE_URL": database_url,
        "SAGAKIT_REDIS_URL": redis_url,
        "SAGAKIT_IMPORTS": "sagakit_examples.slam",
        "SAGAKIT_CHOREOGRAPHY_STREAM": stream,
        "SAGAKIT_CHOREOGRAPHY_CLAIM_IDLE": "0.5",
        "SAGAKIT_CHOREOGRAPHY_MAX_DELIVERIES": "3",
        "SAGAKIT_CHOREOGRAPHY_BLOCK": "0.2",
        "SAGAKIT_CHOREOGRAPHY_TIMEOUT": str(timeout),
        "SLAM_FLEET_SIZE": "16",
        "SLAM_OUTPUT_DIR": str(maps),
    }


class Rig:
    """Participant processes, the tracker, and the test process's reads and starts."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        settings = Settings(
            database_url=env["SAGAKIT_DATABASE_URL"],
            redis_url=env["SAGAKIT_REDIS_URL"],
            choreography_stream=env["SAGAKIT_CHOREOGRAPHY_STREAM"],
            imports=["sagakit_examples.slam"],
        )
        self.choreography = Choreography(settings)
        self.bus = self.choreography.bus
        self.db = make_db(env["SAGAKIT_DATABASE_URL"])
        self.queries = Queries(Pooled(self.db))

    def spawn(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [SAGAKIT, *args], env={**os.environ, **self.env}, stdout=log, stderr=log
        )

    def start(self, **mission: Any) -> str:
        return self.choreography.start("slam", {"robots": 2, "area": "lab", **mission})

    def settled(self, saga_id: str, timeout: float = 60.0) -> str:
        return self.queries.wait(saga_id, timeout=timeout).status

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.db.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())

    def held(self, saga_id: str) -> int:
        return len(self.rows("SELECT id FROM slam_robots WHERE held_by = :s", s=saga_id))

    def history(self, saga_id: str) -> list[tuple[str, str | None]]:
        return [(h["event"], h["step"]) for h in self.queries.detail(saga_id)["history"]]

    def run_all(self) -> None:
        """The tracker and one process per service (robots as consumer robots-a)."""
        assert self.choreography.engine is not None  # migrates the log before they start
        self.spawn("tracker", "tracker")
        self.spawn("robots-a", "participant", "robots", "--consumer", "robots-a")
        for service in ("planning", "exploration", "mapping"):
            self.spawn(service, "participant", service)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.db.dispose()
