"""SLAM missions on one worker per service queue, PostgreSQL and Redis.

The saga log and each of the four services live in five separate databases.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sagakit import Settings, System
from sagakit_examples.slam import fleet
from sagakit_examples.slam.databases import Databases
from sagakit_examples.slam.settings import Service, SlamSettings
from sagakit_examples.slam.tables import SCHEMAS, allocations, maps, plans, scans
from tests.integration.conftest import worker_env
from tests.support.client import Client
from tests.support.cluster import Cluster
from tests.support.history import assert_compensated_in_reverse, steps_with

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def log_url(pg_databases: Callable[[], str]) -> str:
    """The saga log's database, of this module's own."""
    return pg_databases()


@pytest.fixture(scope="module")
def service_urls(pg_databases: Callable[[], str]) -> dict[Service, str]:
    """One fresh database per service (the robots one seeds a fleet of 8)."""
    return {service: pg_databases() for service in Service}


@pytest.fixture(scope="module")
def services(log_url: str, service_urls: dict[Service, str]) -> Iterator[Databases]:
    """The services' databases, as the test process reads them."""
    urls = {f"{service}_database_url": url for service, url in service_urls.items()}
    databases = Databases(SlamSettings(saga_log_url=log_url, **urls))
    yield databases
    databases.dispose()


@pytest.fixture(scope="module")
def slam_cluster(
    log_url: str,
    service_urls: dict[Service, str],
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    env = {
        **worker_env(log_url, redis_url),
        "SAGAKIT_IMPORTS": "sagakit_examples.slam",
        **{f"SLAM_{service.upper()}_DATABASE_URL": url for service, url in service_urls.items()},
        "SLAM_FLEET_SIZE": "8",
        "SLAM_OUTPUT_DIR": str(tmp_path_factory.mktemp("maps")),
    }
    workers = Cluster(env, tmp_path_factory.mktemp("slam-workers"))
    try:
        for service in Service:
            workers.start("-Q", service.value, "-c", "2", name=service.value)
        yield workers
    finally:
        workers.stop()


@pytest.fixture(scope="module")
def client(slam_cluster: Cluster) -> Iterator[Client]:
    env = slam_cluster.env
    system = System(
        Settings(
            database_url=env["SAGAKIT_DATABASE_URL"],
            broker_url=env["SAGAKIT_BROKER_URL"],
            imports=["sagakit_examples.slam"],
        )
    )
    yield Client(system)
    system.close()


def count(services: Databases, table: sa.Table, *where: Any) -> int:
    service = next(s for s, metadata in SCHEMAS.items() if metadata is table.metadata)
    with services.engine(service).connect() as conn:
        query = sa.select(sa.func.count()).select_from(table).where(*where)
        return int(conn.execute(query).scalar_one())


def test_each_service_keeps_its_own_database_on_real_workers(
    client: Client, services: Databases, service_urls: dict[Service, str], log_url: str
) -> None:
    done = client.start("slam", {"robots": 2, "area": "annex", "width": 48, "height": 36})
    undone = client.start(
        "slam",
        {"robots": 2, "area": "attic", "width": 48, "height": 36, "fail_at": "integrate_maps"},
    )
    completed = client.wait(done.saga_id, timeout=120)
    compensated = client.wait(undone.saga_id, timeout=120)

    assert completed.status == "completed", completed.reason
    assert compensated.status == "compensated", compensated.reason
    assert_compensated_in_reverse(client, undone.saga_id)
    output = next(s.output for s in client.steps(done.saga_id) if s.state.name == "integrate_maps")
    assert Path(output["map_path"]).read_bytes().startswith(b"\x89PNG")
    for saga_id, kept in ((done.saga_id, 1), (undone.saga_id, 0)):
        assert count(services, allocations, allocations.c.saga_id == saga_id) == 2
        assert count(services, plans, plans.c.saga_id == saga_id) == kept
        assert (
            count(services, scans, scans.c.saga_id == saga_id, scans.c.status == "complete")
            == 2 * kept
        )
        assert count(services, maps, maps.c.saga_id == saga_id) == kept
    for service, url in service_urls.items():
        db = sa.create_engine(url)
        tables = set(sa.inspect(db).get_table_names())
        db.dispose()
        assert tables == {*SCHEMAS[service].tables, "sagakit_idempotency_keys"}, service
    log = sa.create_engine(log_url)
    assert not [t for t in sa.inspect(log).get_table_names() if t.startswith("slam_")]
    log.dispose()


def test_thirty_missions_at_once_share_a_small_fleet_safely(
    client: Client, slam_cluster: Cluster, services: Databases
) -> None:
    rng = random.Random(20261121)
    ids = [
        client.start(
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
    records = [client.wait(saga_id, timeout=240) for saga_id in ids]
    statuses = [r.status for r in records]
    assert set(statuses) <= {"completed", "compensated"}, slam_cluster.logs()
    assert "completed" in statuses
    shortage = [r for r in records if "not enough robots" in (r.reason or "")]
    assert shortage, "with 8 robots for ~75 requested, some missions must find none free"

    slam_db = services.engine(Service.ROBOTS)
    assert [r for r in fleet.list_fleet(slam_db) if r["held_by"] is not None] == []
    assert fleet.allocation_overlaps(slam_db) == []
    for record in records:
        if record.status == "compensated":
            assert_compensated_in_reverse(client, record.saga_id)
        else:
            assert steps_with(client, record.saga_id, "step_completed")[-1] == "release_robots"
            outputs = {s.state.name: s.output for s in client.steps(record.saga_id)}
            assert outputs["integrate_maps"]["coverage"] > 0.85


def test_mission_failing_in_exploration_on_real_workers(client: Client) -> None:
    saga_id = client.start("slam", {"robots": 3, "area": "yard", "fail_at": "explore"}).saga_id
    record = client.wait(saga_id, timeout=120)
    assert record.status == "compensated"
    undone = assert_compensated_in_reverse(client, saga_id)
    assert set(undone) == {"explore[0]", "explore[1]", "plan_routes", "allocate_robots"}
    queues = {a.queue for a in client.attempts(saga_id)}
    assert queues == {"robots", "planning", "exploration"}
    workers = {a.worker for a in client.attempts(saga_id)}
    assert len(workers) == 3  # each service's own worker ran its steps
