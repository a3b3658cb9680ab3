"""The robot fleet: add and retire robots, and missions that wait for robots."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import typer
from fastapi import FastAPI
from typer.testing import CliRunner

from sagakit import NonRetryableError, RetryableError
from sagakit_examples.slam import databases, fleet, register_api, register_cli
from sagakit_examples.slam.databases import Databases
from sagakit_examples.slam.settings import Service, SlamSettings
from sagakit_examples.slam.tables import utcnow, waits
from tests.support.api_app import TestClient
from tests.support.cluster import wait_for
from tests.support.slam import Mission, slam_system


@pytest.fixture
def robots_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[sa.Engine]:
    """The robot service's database (a SQLite file with a fresh fleet of 8)."""
    monkeypatch.setenv("SLAM_ROBOTS_DATABASE_URL", f"sqlite:///{tmp_path}/robots.db")
    monkeypatch.setenv("SLAM_FLEET_SIZE", "8")
    databases.reset()
    yield databases.current().engine(Service.ROBOTS)
    databases.reset()


def hold(engine: sa.Engine, saga_id: str, count: int) -> list[int]:
    with engine.begin() as conn:
        return [robot["id"] for robot in fleet.allocate(conn, saga_id, count)]


def states(engine: sa.Engine) -> dict[str, str]:
    return {r["name"]: r["state"] for r in fleet.list_fleet(engine, include_retired=True)}


# -- adding and retiring -----------------------------------------------------------------


def test_added_robots_are_numbered_after_every_robot_the_fleet_had(robots_db: sa.Engine) -> None:
    with robots_db.begin() as conn:
        fleet.retire(conn, ["scout-08"])
        assert fleet.add(conn, 2) == ["scout-09", "scout-10"]
    assert [r["name"] for r in fleet.list_fleet(robots_db)][-3:] == [
        "scout-07",
        "scout-09",
        "scout-10",
    ]
    with pytest.raises(ValueError, match="between 1 and 100"), robots_db.begin() as conn:
        fleet.add(conn, 0)
    with robots_db.begin() as conn:
        for _ in range(9):
            fleet.add(conn, 100)  # ids up to 910
    with pytest.raises(ValueError, match="at most 999"), robots_db.begin() as conn:
        fleet.add(conn, 90)
    assert len(fleet.list_fleet(robots_db, include_retired=True)) == 910


def test_a_free_robot_retires_at_once_and_is_never_handed_out(robots_db: sa.Engine) -> None:
    with robots_db.begin() as conn:
        outcome = fleet.retire(conn, ["scout-01", "scout-01", "scout-02"])
    assert outcome == {"scout-01": "retired", "scout-02": "retired"}
    assert [r["name"] for r in fleet.list_fleet(robots_db)][:1] == ["scout-03"]
    assert states(robots_db)["scout-01"] == "retired"
    assert hold(robots_db, "s1", 6) == [3, 4, 5, 6, 7, 8]
    with pytest.raises(fleet.NotEnoughRobots, match="1 requested, 0 of 6 free"):
        hold(robots_db, "s2", 1)
    with robots_db.begin() as conn:
        assert fleet.retire(conn, ["scout-01"]) == {"scout-01": "already retired"}


def test_a_robot_in_use_retires_when_its_mission_releases_it(robots_db: sa.Engine) -> None:
    hold(robots_db, "s-busy", 2)
    with robots_db.begin() as conn:
        outcome = fleet.retire(conn, ["scout-02"])
    assert outcome["scout-02"].startswith("retiring (held by s-busy")
    assert states(robots_db)["scout-02"] == "retiring"
    with robots_db.begin() as conn:
        released = fleet.release(conn, "s-busy")
    assert (released.robots, released.retired) == ([1, 2], ["scout-02"])
    assert states(robots_db)["scout-02"] == "retired"
    assert hold(robots_db, "s-next", 7) == [1, 3, 4, 5, 6, 7, 8]


def test_retiring_an_unknown_robot_changes_nothing(robots_db: sa.Engine) -> None:
    with pytest.raises(fleet.UnknownRobots, match="'scout-99'"), robots_db.begin() as conn:
        fleet.retire(conn, ["scout-01", "scout-99"])
    assert set(states(robots_db).values()) == {"free"}


@pytest.mark.postgres
def test_allocation_reserves_exactly_what_was_asked_on_postgresql(
    pg_databases: Callable[[], str],
) -> None:
    services = Databases(SlamSettings(robots_database_url=pg_databases(), fleet_size=8))
    engine = services.engine(Service.ROBOTS)
    try:
        assert hold(engine, "s-two", 2) == [1, 2]
        assert hold(engine, "s-three", 3) == [3, 4, 5]
        with pytest.raises(fleet.NotEnoughRobots, match="4 requested, 3 of 8 free"):
            hold(engine, "s-four", 4)
        assert [len(fleet.held_by(engine, s)) for s in ("s-two", "s-three", "s-four")] == [2, 3, 0]
    finally:
        services.dispose()


# -- waiting ------------------------------------------------------------------------------


def test_the_wait_starts_once_per_saga(robots_db: sa.Engine) -> None:
    first = utcnow()
    with robots_db.begin() as conn:
        assert fleet.wait_started(conn, "s-wait", 3, first) == first
        assert fleet.wait_started(conn, "s-wait", 3, first + timedelta(seconds=9)) == first
    with robots_db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(waits)).scalar_one() == 1


def test_a_shortage_is_retried_until_the_wait_is_over() -> None:
    short = fleet.NotEnoughRobots(3, 2, 8)
    waiting = fleet.shortage(short, waited=4.0, limit=10.0)
    assert isinstance(waiting, RetryableError)
    assert (
        str(waiting)
        == "not enough robots: 3 requested, 2 of 8 free; waiting for robots (4 s of 10 s)"
    )
    over = fleet.shortage(short, waited=10.3, limit=10.0)
    assert isinstance(over, NonRetryableError)
    assert (
        str(over)
        == "not enough robots: 3 requested, 2 of 8 free, after waiting 10 s (robot_wait 10 s)"
    )
    at_once = fleet.shortage(short, waited=0.0, limit=0.0)
    assert isinstance(at_once, NonRetryableError)
    assert str(at_once) == "not enough robots: 3 requested, 2 of 8 free"


def test_a_mission_larger_than_the_fleet_does_not_wait() -> None:
    never = fleet.shortage(fleet.NotEnoughRobots(14, 8, 8), waited=0.0, limit=600.0)
    assert isinstance(never, NonRetryableError)
    assert "the fleet has only 8 robots in service" in str(never)


@pytest.fixture
def small_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mission]:
    """An embedded system with a fleet of 4 robots."""
    with slam_system(tmp_path, monkeypatch, fleet_size=4) as system:
        system.start_embedded()
        yield Mission(system, tmp_path / "maps")
    databases.reset()


def allocate_attempts(mission: Mission, saga_id: str) -> int:
    return sum(
        1
        for h in mission.history(saga_id)
        if h.step == "allocate_robots" and h.event in ("step_failed", "step_completed")
    )


def test_a_mission_that_may_not_wait_gives_up_at_once(small_fleet: Mission) -> None:
    hold(small_fleet.db, "s-holder", 2)
    record = small_fleet.run(robots=3)

    assert record.status == "compensated"
    assert record.failed_step == "allocate_robots"
    assert (record.reason or "").endswith("not enough robots: 3 requested, 2 of 4 free")
    assert allocate_attempts(small_fleet, record.saga_id) == 1


def test_a_waiting_mission_gives_up_at_its_deadline(small_fleet: Mission) -> None:
    hold(small_fleet.db, "s-holder", 4)
    record = small_fleet.run(robots=2, robot_wait=1.0)

    assert record.status == "compensated"
    assert "not enough robots: 2 requested, 0 of 4 free, after waiting" in (record.reason or "")
    assert allocate_attempts(small_fleet, record.saga_id) > 1
    assert small_fleet.held() == [r for r in fleet.list_fleet(small_fleet.db) if r["held_by"]]
    assert {r["held_by"] for r in small_fleet.held()} == {"s-holder"}


def test_a_waiting_mission_runs_once_robots_are_free(small_fleet: Mission) -> None:
    hold(small_fleet.db, "s-holder", 4)
    saga_id = small_fleet.start(robots=2, robot_wait=60, width=30, height=24)
    wait_for(lambda: allocate_attempts(small_fleet, saga_id) >= 2, 30, "a second attempt")
    with small_fleet.db.begin() as conn:
        fleet.release(conn, "s-holder")
    record = small_fleet.wait(saga_id, timeout=30)

    assert record.status == "completed", record.reason
    allocated = small_fleet.outputs(saga_id)["allocate_robots"]
    assert allocated["waited"] > 0


def test_more_missions_than_robots_all_complete_by_waiting(small_fleet: Mission) -> None:
    saga_ids = [
        small_fleet.start(robots=2 + i % 2, area=f"bay{i}", robot_wait=120, width=30, height=24)
        for i in range(12)
    ]
    records = [small_fleet.wait(saga_id, timeout=90) for saga_id in saga_ids]

    assert [r.status for r in records] == ["completed"] * 12, [r.reason for r in records]
    assert any(allocate_attempts(small_fleet, r.saga_id) > 1 for r in records)  # some waited
    assert fleet.allocation_overlaps(small_fleet.db) == []
    assert small_fleet.held() == []


# -- the CLI and the API ----------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register_cli(app)

    @app.command()
    def other() -> None:  # a second command, so that `robots` stays a subcommand
        """Nothing."""

    return app


def test_the_robots_commands(robots_db: sa.Engine, cli: typer.Typer) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["robots"])
    assert listed.exit_code == 0, listed.output
    assert "fleet: 8 of 8 free" in listed.output
    assert "scout-08" in listed.output

    added = runner.invoke(cli, ["robots", "add", "2"])
    assert (added.exit_code, added.output.strip()) == (0, "added scout-09, scout-10")
    hold(robots_db, "s-cli", 1)
    retired = runner.invoke(cli, ["robots", "retire", "scout-01", "scout-02"])
    assert retired.exit_code == 0, retired.output
    assert retired.output.splitlines() == [
        "scout-01: retiring (held by s-cli; retired when it is released)",
        "scout-02: retired",
    ]
    listed = runner.invoke(cli, ["robots"])
    assert "fleet: 8 of 8 free (1 retired, not shown: --all)" in listed.output
    listed = runner.invoke(cli, ["robots", "--json"])
    robots = {r["name"]: r for r in json.loads(listed.output)}
    assert "scout-02" not in robots
    assert robots["scout-01"] == {
        "id": 1,
        "name": "scout-01",
        "state": "retiring",
        "held_by": "s-cli",
    }
    everyone = json.loads(runner.invoke(cli, ["robots", "--all", "--json"]).output)
    assert len(everyone) == 10

    unknown = runner.invoke(cli, ["robots", "retire", "scout-77"])
    assert unknown.exit_code == 2
    assert "no robot named 'scout-77' in the fleet" in unknown.output
    too_many = runner.invoke(cli, ["robots", "add", "500"])
    assert too_many.exit_code == 2
    assert "100" in too_many.output  # the bound


def test_the_fleet_over_http(robots_db: sa.Engine) -> None:
    with robots_db.begin() as conn:
        fleet.retire(conn, ["scout-03"])
    hold(robots_db, "s-http", 1)
    app = FastAPI()
    register_api(app)
    with TestClient(app) as client:
        response = client.get("/api/robots")
    assert response.status_code == 200
    robots = response.json()
    assert len(robots) == 8
    assert robots[0] == {"id": 1, "name": "scout-01", "state": "in_use", "held_by": "s-http"}
    assert robots[2]["state"] == "retired"
    assert {r["state"] for r in robots[3:]} == {"free"}
