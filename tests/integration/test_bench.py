"""`sagakit bench` itself, run small on the real PostgreSQL and Redis: every mode still works
against today's schema and reports what it promises (numbers are not asserted: this
machine is shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from sagakit.bench.scale import _measure
from sagakit.store import make_db

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
SAGAKIT = str(Path(sys.executable).parent / "sagakit")  # the installed entry point


def bench(env: dict[str, str], cwd: Path, *args: str, timeout: float = 300) -> dict[str, Any]:
    """Run the installed `sagakit bench` with `args` and `--json`; its report."""
    done = subprocess.run(
        [SAGAKIT, "bench", *args, "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def configured(pg_url: str, redis_url: str) -> dict[str, str]:
    """The environment of a deployment on PostgreSQL with a Redis broker."""
    return {
        **os.environ,
        "SAGAKIT_DATABASE_URL": pg_url,
        "SAGAKIT_BROKER_URL": redis_url,
        "SAGAKIT_REDIS_URL": redis_url,
    }


def test_the_scale_script_generates_a_log_of_todays_shape(pg_databases: Callable[[], str]) -> None:
    db = make_db(pg_databases())
    try:
        result = _measure(db, 1000, lambda _: None)
        with db.connect() as conn:
            sagas = conn.execute(sa.text("SELECT count(*) FROM sagakit_sagas")).scalar_one()
            steps = conn.execute(sa.text("SELECT count(*) FROM sagakit_steps")).scalar_one()
    finally:
        db.dispose()
    assert sagas == 1000 and steps >= 1000
    timings = result["timings"]
    assert {"list newest first", "get one saga (detail)", "GET /metrics (collect)"} <= set(timings)
    assert all(t["p95_ms"] >= t["p50_ms"] > 0 for t in timings.values())


@pytest.mark.redis
def test_compare_runs_every_contender_and_reports_ratios(
    pg_databases: Callable[[], str], redis_url: str, tmp_path: Path
) -> None:
    env = configured(pg_databases(), redis_url)
    args = ("--compare", "--rounds", "1", "--runs", "2", "-n", "10")
    result = bench(env, tmp_path, *args)
    for contender in ("raw", "chain", "saga", "eager", "chain_fail", "saga_fail", "eager_fail"):
        assert result[contender]["steps_per_second"] > 0, contender
    # An eager saga's run of steps rides on one message: fewer Redis commands per step.
    assert (
        result["eager"]["per_step"]["redis_commands"] < result["saga"]["per_step"]["redis_commands"]
    )
    assert set(result["eager_vs_chain"]) == set(result["saga_vs_chain"])
    # A saga step is about one durable write: the counts come from every process of the run.
    assert 1.0 <= result["saga"]["per_step"]["sql_transactions"] < 2.0
    assert set(result["saga_vs_chain"]) == {"latency", "throughput", "failure_path"}
    by_round = result["saga_vs_chain_by_round"]
    assert all(len(by_round[key]) == result["rounds"] for key in result["saga_vs_chain"])
    latency = by_round["latency"]
    assert min(latency) <= result["saga_vs_chain"]["latency"] <= max(latency)


@pytest.mark.redis
def test_a_burst_on_a_configured_broker_runs_its_own_worker(
    pg_databases: Callable[[], str], redis_url: str, tmp_path: Path
) -> None:
    """No worker of the deployment has the bench's sagas: the bench starts one."""
    env = configured(pg_databases(), redis_url)
    result = bench(env, tmp_path, "-n", "5", "-m", "2", "--timeout", "60", timeout=200)
    assert (result["completed"], result["broker"]) == (5, "configured"), result


@pytest.mark.redis
def test_choreographed_runs_both_styles_in_one_run(
    pg_databases: Callable[[], str], redis_url: str, tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "SAGAKIT_BROKER_URL"},  # embedded worker
        "SAGAKIT_DATABASE_URL": pg_databases(),
        "SAGAKIT_REDIS_URL": redis_url,
    }
    result = bench(env, tmp_path, "--choreographed", "-n", "5", "-m", "2")
    for style in ("orchestrated", "choreographed"):
        assert result[style]["completed"] == 5, result
        assert result[style]["p50_ms"] > 0
    stream = redis.Redis.from_url(redis_url).keys("sagakit:choreography:bench:*")
    assert stream == []  # the bench's stream is removed after the run
