"""Ctrl-C (a real SIGINT to the installed `sagakit`) while an embedded run waits for its saga."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sagakit.queries import Queries
from sagakit.store import make_db
from sagakit.store.db import Pooled
from tests.support.cluster import ROOT, SAGAKIT, wait_for
from tests.support.redis_server import RedisServer


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SAGAKIT_DATABASE_URL": f"sqlite:///{tmp_path}/interrupt.db",
        "SAGAKIT_IMPORTS": "tests.support.workload",
        "SAGAKIT_SWEEP_INTERVAL": "0.2",
        "SAGAKIT_WORKER_LOST_AFTER": "1",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


@pytest.fixture
def reads(env: dict[str, str]) -> Iterator[Queries]:
    db = make_db(env["SAGAKIT_DATABASE_URL"])
    yield Queries(Pooled(db))
    db.dispose()


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [SAGAKIT, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def running_step(reads: Queries, step: str) -> str | None:
    """The id of the saga whose `step` has begun its first attempt, once one has."""
    try:
        views, _ = reads.page(limit=1)
    except Exception:  # the log's tables are made by the command, a moment after it starts
        return None
    for view in views:
        for attempt in reads.attempts(view["id"]):
            if attempt.step == step and attempt.status != "scheduled":
                return str(view["id"])
    return None


def resume(env: dict[str, str], reads: Queries, saga_id: str) -> str:
    """Run an embedded worker until the saga settles; its final status."""
    worker = start(env, "worker")
    try:
        record = wait_for(
            lambda: (r := reads.get(saga_id)).state.status.settled and r,
            60,
            f"saga {saga_id} to settle under the next embedded worker",
        )
    finally:
        worker.send_signal(signal.SIGINT)
        worker.communicate(timeout=30)
    return str(record.status)


SLOW_B = '{"faults": {"b": ["slow_first:2"]}}'


def test_ctrl_c_lets_the_step_finish_says_so_and_the_next_start_resumes(
    env: dict[str, str], reads: Queries
) -> None:
    run = start(env, "run", "linear", "--input", SLOW_B, "--wait")
    saga_id = wait_for(lambda: running_step(reads, "b"), 60, "step b to start")
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)

    assert run.returncode == 130
    assert err.strip().splitlines() == [
        f"interrupted: saga {saga_id} is still running and resumes with the next sagakit "
        "command that runs sagas here (sagakit worker, sagakit run); letting the step in "
        "flight finish, Ctrl-C again to quit now"
    ]
    view = reads.detail(saga_id)
    assert view["status"] == "running"
    b = next(s for s in view["steps"] if s["name"] == "b")
    assert [a["status"] for a in b["attempts"]] == ["succeeded"]  # finished, not cut short

    assert resume(env, reads, saga_id) == "completed"
    b = next(s for s in reads.detail(saga_id)["steps"] if s["name"] == "b")
    assert len(b["attempts"]) == 1  # nothing ran twice


def test_a_second_ctrl_c_quits_at_once_and_the_cut_step_is_retried(
    env: dict[str, str], reads: Queries
) -> None:
    slow = '{"faults": {"b": ["slow_first:60"]}}'
    run = start(env, "run", "linear", "--input", slow, "--wait")
    saga_id = wait_for(lambda: running_step(reads, "b"), 60, "step b to start")
    run.send_signal(signal.SIGINT)
    assert run.stderr is not None
    first = run.stderr.readline()  # the interruption is said before the worker stops
    assert first.startswith(f"interrupted: saga {saga_id} is still running")
    run.send_signal(signal.SIGINT)
    sent = time.monotonic()
    run.communicate(timeout=30)
    assert run.returncode == 130
    assert time.monotonic() - sent < 10  # not the 60 s the step would take

    assert resume(env, reads, saga_id) == "completed"
    b = next(s for s in reads.detail(saga_id)["steps"] if s["name"] == "b")
    assert [a["status"] for a in b["attempts"]] == ["timed_out", "succeeded"]


@pytest.mark.redis
def test_ctrl_c_while_following_a_saga_on_workers_says_it_keeps_running(
    env: dict[str, str], reads: Queries, tmp_path: Path
) -> None:
    broker = RedisServer(tmp_path)  # no worker consumes from it: the saga waits in its queue
    broker.start()
    try:
        run = start({**env, "SAGAKIT_BROKER_URL": broker.url}, "run", "linear", "--wait")
        saga_id = wait_for(lambda: _newest(reads), 60, "the saga to start")
        # Its first message sent: `run` is following it, past the start's commit and send.
        queued = redis.Redis.from_url(broker.url)
        wait_for(lambda: queued.llen("work"), 30, "the first step's message")
        queued.close()
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=30)
    finally:
        broker.stop()
    assert run.returncode == 130, err
    assert err.strip().splitlines() == [
        f"interrupted: saga {saga_id} keeps running on the workers; "
        f"`sagakit show {saga_id}` tells how it ends"
    ]


def _newest(reads: Queries) -> str | None:
    try:
        views, _ = reads.page(limit=1)
    except Exception:  # no tables yet
        return None
    return str(views[0]["id"]) if views else None
