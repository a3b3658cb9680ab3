"""SLAM missions on one worker per service queue, PostgreSQL and Redis."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from sagakit import Engine, Settings, System
from sagakit_examples.slam import db, fleet
from tests.integration.conftest import worker_env
from tests.support.cluster import Cluster
from tests.support.history import assert_compensated_in_reverse, steps_with

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
SERVICES = ("robots", "planning", "exploration", "mapping")


@pytest.fixture(scope="module")
def slam_db_url(pg_databases: Callable[[], str]) -> str:
    """A database of this module's own: a fresh fleet of 8 robots."""
    return pg_databases()


@pytest.fixture(scope="module")
def slam_cluster(
    slam_db_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    pg_url = slam_db_url
    env = {
        **worker_env(pg_url, redis_url),
        "SAGAKIT_IMPORTS": "sagakit_examples.slam",
        "SLAM_DATABASE_URL": pg_url,
        "SLAM_FLEET_SIZE": "8",
        "SLAM_OUTPUT_DIR": str(tmp_path_factory.mktemp("maps")),
    }
    workers = Cluster(env, tmp_path_factory.mktemp("slam-workers"))
    try:
        for queue in SERVICES:
            workers.start("-Q", queue, "-c", "2", name=queue)
        yield workers
    finally:
        workers.stop()


@pytest.fixture(scope="module")
def engine(slam_cluster: Cluster) -> Iterator[Engine]:
    env = slam_cluster.env
    system = System(
        Settings(
            database_url=env["SAGAKIT_DATABASE_URL"],
            broker_url=env["SAGAKIT_BROKER_URL"],
            imports=["sagakit_examples.slam"],
        )
    )
    yield system.engine
    system.close()


def test_thirty_missions_at_once_share_a_small_fleet_safely(
    engine: Engine, slam_cluster: Cluster, slam_db_url: str
) -> None:
    rng = random.Random(20261121)
    ids = [
        engine.start(
            "slam",
            {
                "robots": rng.choice([2, 3]),
                "area": f"site-{i}",
                "seed": i,
                "width": 48,
                "height": 36,
                "fail_rate": 0.1,
            },
        ).saga_id
        for i in range(30)
    ]
    records = [engine.wait(saga_id, timeout=240) for saga_id in ids]
    statuses = [r.status for r in records]
    assert set(statuses) <= {"completed", "compensated"}, slam_cluster.logs()
    assert "completed" in statuses
    shortage = [r for r in records if "not enough free robots" in (r.reason or "")]
    assert shortage, "with 8 robots for ~75 requested, some missions must find none free"

    slam_db = db.get_engine(slam_db_url)
    assert [r for r in fleet.list_fleet(slam_db) if r["held_by"] is not None] == []
    assert fleet.allocation_overlaps(slam_db) == []
    for record in records:
        if record.status == "compensated":
            assert_compensated_in_reverse(engine, record.saga_id)
        else:
            assert steps_with(engine, record.saga_id, "step_completed")[-1] == "release_robots"
            assert record.state.steps[-2].output["coverage"] > 0.85


def test_mission_failing_in_exploration_on_real_workers(engine: Engine) -> None:
    saga_id = engine.start("slam", {"robots": 3, "area": "yard", "fail_at": "explore"}).saga_id
    record = engine.wait(saga_id, timeout=120)
    assert record.status == "compensated"
    undone = assert_compensated_in_reverse(engine, saga_id)
    assert set(undone) == {"explore[0]", "explore[1]", "plan_routes", "allocate_robots"}
    queues = {a.queue for a in engine.attempts(saga_id)}
    assert queues == {"robots", "planning", "exploration"}
    workers = {a.worker for a in engine.attempts(saga_id)}
    assert len(workers) == 3  # each service's own worker ran its steps
