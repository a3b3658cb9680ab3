"""Real `sagakit worker` processes for integration and chaos tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SAGAKIT = str(Path(sys.executable).parent / "sagakit")


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group (a warm shutdown), then SIGKILL those that hang."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Cluster:
    """Starts, kills and stops worker subprocesses sharing one environment."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = {**os.environ, **env}
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, name: str | None = None) -> subprocess.Popen[bytes]:
        """Start one worker and wait until Celery says it is ready."""
        index = len(self.procs)
        name = name or f"w{index}"
        log = self.logdir / f"{name}.log"
        handle = log.open("wb")
        proc = subprocess.Popen(
            [SAGAKIT, "worker", "--hostname", f"{name}@%h", *args],
            cwd=ROOT,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        self.procs.append(proc)
        wait_for(
            lambda: b" ready." in log.read_bytes() or proc.poll() is not None,
            60,
            f"worker {name} to be ready",
        )
        if proc.poll() is not None:
            raise AssertionError(f"worker {name} exited:\n{log.read_text()[-3000:]}")
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and its pool processes at once."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        """Stop every worker: SIGTERM (warm shutdown), then SIGKILL if it hangs."""
        stop_all(self.procs)

    def logs(self) -> str:
        """Tail of every worker log, for failure messages."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.logdir.glob("*.log"))
        )
