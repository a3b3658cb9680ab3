"""The SLAM mission end to end on the embedded system: steps, compensations, injected faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from sagakit import InvalidInput, NonRetryableError, StepContext
from sagakit.idempotency import once
from sagakit_examples.slam import databases, fleet
from sagakit_examples.slam.faults import Faults
from sagakit_examples.slam.routing import expand
from sagakit_examples.slam.saga import UNDO_RETRY, MissionInput
from sagakit_examples.slam.sensing import grid_from_text
from sagakit_examples.slam.tables import allocations, maps, plans, scans, utcnow
from sagakit_examples.slam.world import generate_world
from tests.support.slam import Mission, slam_system

SAGAKIT = str(Path(sys.executable).parent / "sagakit")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FORWARD = ("allocate_robots", "plan_routes", "explore[0]", "explore[1]", "explore[2]")


@pytest.fixture
def mission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mission]:
    """Sagas run on an embedded worker (stopping it takes about two seconds)."""
    with slam_system(tmp_path, monkeypatch) as system:
        system.start_embedded()
        yield Mission(system, tmp_path / "maps")
    databases.reset()


@pytest.fixture
def idle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mission]:
    """The same system without a worker, for what needs no saga to run."""
    with slam_system(tmp_path, monkeypatch) as system:
        yield Mission(system, tmp_path / "maps")
    databases.reset()


def test_happy_path_maps_the_area_and_returns_the_robots(mission: Mission) -> None:
    record = mission.run()

    assert record.status == "completed", record.reason
    output = mission.outputs(record.saga_id)["integrate_maps"]
    png = Path(output["map_path"])
    assert png.parent == mission.output
    assert png.read_bytes().startswith(PNG_MAGIC)
    # Measured for warehouse/seed 0/80x60 with 3 robots: coverage 0.9964, accuracy 0.9911.
    assert output["coverage"] > 0.85
    assert output["accuracy"] > 0.9
    assert Image.open(png).size[0] >= 800
    completed = mission.events(record.saga_id, "step_completed")
    assert sorted(completed) == sorted([*FORWARD, "integrate_maps", "release_robots"])
    assert mission.events(record.saga_id, "step_compensated") == []
    assert mission.held() == []
    assert mission.count(allocations, allocations.c.released_at.is_(None)) == 0
    assert mission.count(allocations, allocations.c.saga_id == record.saga_id) == 3
    assert mission.count(scans, scans.c.status == "complete") == 3
    assert mission.count(maps, maps.c.saga_id == record.saga_id) == 1
    assert fleet.allocation_overlaps(mission.db) == []


def test_what_crosses_services_travels_in_step_outputs(mission: Mission) -> None:
    record = mission.run()
    outputs = mission.outputs(record.saga_id)
    world = generate_world("warehouse")

    robots = [robot["name"] for robot in outputs["allocate_robots"]["robots"]]
    routes = outputs["plan_routes"]["routes"]
    assert [route["robot"] for route in routes] == robots
    for branch, route in enumerate(routes):
        cells = expand(route["corners"])
        assert len(cells) == route["cells"]
        assert all(world.free[y, x] for x, y in cells)  # driven around every obstacle
        explored = outputs[f"explore[{branch}]"]
        assert explored["robot"] == route["robot"]
        assert explored["cells_driven"] == len(cells)
        grid = grid_from_text(explored["grid"])
        assert grid.shape == (world.height, world.width)
        assert int(((grid > 0.2) | (grid < -0.2)).sum()) == explored["known_cells"] > 0


@pytest.mark.parametrize(
    ("fail_at", "failed_step"),
    [
        ("allocate_robots", "allocate_robots"),
        ("plan_routes", "plan_routes"),
        ("explore", "explore[2]"),
        ("explore[1]", "explore[1]"),
        ("integrate_maps", "integrate_maps"),
    ],
)
def test_a_failed_step_compensates_what_completed_in_reverse(
    mission: Mission, fail_at: str, failed_step: str
) -> None:
    record = mission.run(faults={"fail_at": fail_at})

    assert record.status == "compensated"
    assert record.failed_step == failed_step
    assert "injected" in (record.reason or "")
    completed = mission.events(record.saga_id, "step_completed")
    assert failed_step not in completed
    if failed_step.startswith("explore"):  # the other branches finished, then were undone
        assert set(FORWARD[2:]) - set(completed) == {failed_step}
    assert mission.events(record.saga_id, "step_compensated") == completed[::-1]
    assert mission.held() == []
    assert mission.count(maps) == 0
    assert list(mission.output.glob("*.png")) == []
    assert mission.count(plans) == 0
    assert mission.count(scans, scans.c.status != "aborted") == 0
    assert mission.count(allocations, allocations.c.released_at.is_(None)) == 0


def test_a_failure_after_the_point_of_no_return_needs_an_operator(mission: Mission) -> None:
    record = mission.run(fail_at="release_robots")  # top-level, as the CLI sends it

    assert record.status == "failed"
    assert record.failed_step == "release_robots"
    assert mission.events(record.saga_id, "step_compensated") == []
    assert mission.count(maps, maps.c.saga_id == record.saga_id) == 1
    assert len(mission.held()) == 3  # still out: an operator decides


def test_not_enough_robots_compensates_with_the_reason(mission: Mission) -> None:
    record = mission.run(robots=9)  # the fleet has 8

    assert record.status == "compensated"
    assert record.failed_step == "allocate_robots"
    assert "not enough robots: 9 requested, 8 of 8 free" in (record.reason or "")
    assert mission.events(record.saga_id, "step_compensated") == []
    assert mission.count(allocations) == 0
    assert mission.held() == []


def test_a_transient_failure_is_retried(mission: Mission) -> None:
    record = mission.run(faults={"transient": {"plan_routes": 2}})

    assert record.status == "completed", record.reason
    attempts = [
        h.attempt
        for h in mission.system.queries.history(record.saga_id)
        if h.step == "plan_routes" and h.event in ("step_failed", "step_completed")
    ]
    assert attempts == [1, 2, 3]
    assert mission.events(record.saga_id, "step_failed").count("plan_routes") == 2
    assert mission.count(plans) == 1  # the failed attempts left nothing behind


def test_an_exhausted_compensation_fails_the_saga(mission: Mission) -> None:
    record = mission.run(
        faults={"fail_at": "integrate_maps", "compensation_fail": {"plan_routes": 99}}
    )

    assert record.status == "failed"
    assert record.failed_step == "plan_routes"
    failures = mission.events(record.saga_id, "compensation_failed")
    assert failures == ["plan_routes"] * (UNDO_RETRY.max_attempts or 0)
    completed = mission.events(record.saga_id, "step_completed")
    undone = [step for step in completed[::-1] if step.startswith("explore")]
    assert mission.events(record.saga_id, "step_compensated") == undone
    assert len(undone) == 3
    # Needs an operator: the plan and the robots are still held, nothing else was undone.
    assert mission.count(plans) == 1
    assert len(mission.held()) == 3


def test_an_operator_retry_finishes_the_compensation(mission: Mission) -> None:
    budget = UNDO_RETRY.max_attempts or 0
    faults = {"fail_at": "integrate_maps", "compensation_fail": {"plan_routes": budget}}
    record = mission.run(faults=faults)
    assert record.status == "failed"

    mission.engine.retry(record.saga_id)
    record = mission.system.queries.wait(record.saga_id, timeout=30)

    assert record.status == "compensated", record.reason
    assert mission.events(record.saga_id, "step_compensated")[-2:] == [
        "plan_routes",
        "allocate_robots",
    ]
    assert mission.events(record.saga_id, "saga_resumed") == ["plan_routes"]
    assert mission.held() == []
    assert mission.count(plans) == 0


def test_an_operator_lifts_a_permanent_fault_and_the_retry_compensates(
    mission: Mission,
) -> None:
    """A fault injected in the input is there for good; lifted in the planning service's
    own database (the installed ``sagakit faults lift``), the next retry goes through."""
    faults = {"fail_at": "integrate_maps", "compensation_fail": {"plan_routes": 99}}
    record = mission.run(faults=faults)
    assert record.status == "failed"
    mission.engine.retry(record.saga_id)
    assert mission.system.queries.wait(record.saga_id, timeout=30).status == "failed"

    def sagakit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SAGAKIT, *args], capture_output=True, text=True, timeout=60, env=dict(os.environ)
        )

    refused = sagakit("faults", "lift", record.saga_id, "--step", "teleport", "--reason", "x")
    assert refused.returncode == 2
    assert "--step: unknown step 'teleport'" in refused.stderr
    lifted = sagakit(
        "faults", "lift", record.saga_id, "--step", "plan_routes",
        "--reason", "planner fixed by hand", "--by", "ana",
    )  # fmt: skip
    assert lifted.returncode == 0, lifted.stderr
    assert f"sagakit retry {record.saga_id}" in lifted.stdout
    shown = json.loads(sagakit("faults", "list", record.saga_id, "--json").stdout)
    assert [(r["service"], r["step"], r["lifted_by"], r["reason"]) for r in shown] == [
        ("planning", "plan_routes", "ana", "planner fixed by hand")
    ]

    mission.engine.retry(record.saga_id)
    record = mission.system.queries.wait(record.saga_id, timeout=30)
    assert record.status == "compensated", record.reason
    assert mission.events(record.saga_id, "step_compensated")[-2:] == [
        "plan_routes",
        "allocate_robots",
    ]
    assert mission.held() == []
    assert mission.count(plans) == 0


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"robots": 0}, "input.robots"),
        ({"faults": {"fail_at": "teleport"}}, "input.faults.fail_at"),
        ({"fail_at": "teleport"}, "input.faults.fail_at"),
        ({"area": "bad area!"}, "input.area"),
        ({"area": ""}, "input.area"),
        ({"colour": "red"}, "input.colour"),
        ({"robot_wait": -1}, "input.robot_wait"),
        ({"robot_wait": 601}, "input.robot_wait"),
        ({"faults": {"fail_at": "explore[3]"}}, "input"),
    ],
)
def test_invalid_input_is_refused_naming_the_field(
    idle: Mission, fields: dict[str, Any], where: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        idle.engine.start("slam", {"robots": 3, "area": "warehouse", **fields})
    assert caught.value.field == where
    if "teleport" in str(fields):
        assert "allocate_robots" in caught.value.reason
        assert "release_robots" in caught.value.reason


def test_cli_style_top_level_faults_are_lifted() -> None:
    parsed = MissionInput.model_validate(
        {"robots": "3", "area": "warehouse", "fail_at": "explore", "fail_rate": "0.2"}
    )
    assert parsed.faults == Faults(fail_at="explore", fail_rate=0.2)
    assert Faults(slow={"explore": 120}).slow == {"explore": 30.0}


def test_fail_rate_is_deterministic_per_saga_and_step() -> None:
    def ctx(saga_id: str, step: str) -> StepContext:
        return StepContext(saga_id, "slam", step, 1, "action", {})

    always, never, half = Faults(fail_rate=1.0), Faults(fail_rate=0.0), Faults(fail_rate=0.5)
    with pytest.raises(NonRetryableError):
        always.check(ctx("s1", "plan_routes"))
    never.check(ctx("s1", "plan_routes"))
    always.check(ctx("s1", "release_robots"))  # past the point of no return: never drawn
    outcomes = []
    for index in range(40):
        try:
            half.check(ctx(f"saga{index}", "explore[0]"), seed=7)
            outcomes.append(True)
        except NonRetryableError:
            outcomes.append(False)
    again = []
    for index in range(40):
        try:
            half.check(ctx(f"saga{index}", "explore[0]"), seed=7)
            again.append(True)
        except NonRetryableError:
            again.append(False)
    assert outcomes == again
    assert 5 < outcomes.count(False) < 35


def test_allocation_is_idempotent_on_its_key(idle: Mission) -> None:
    key = "s-idem:allocate_robots:action"
    results = []
    for _ in range(2):
        with idle.db.begin() as conn:

            def allocate(c: sa.Connection = conn) -> dict[str, Any]:
                return {"robots": fleet.allocate(c, "s-idem", 2)}

            results.append(once(conn, key, allocate))
    assert results[0] == results[1]
    assert [r["id"] for r in results[0]["robots"]] == [1, 2]
    assert fleet.held_by(idle.db, "s-idem") == [1, 2]
    assert idle.count(allocations) == 2


def test_release_touches_only_its_own_saga_and_repeats_as_a_no_op(idle: Mission) -> None:
    with idle.db.begin() as conn:
        fleet.allocate(conn, "s-mine", 2)
        fleet.allocate(conn, "s-other", 3)
    released = []
    for _ in range(2):
        with idle.db.begin() as conn:
            released.append(fleet.release(conn, "s-mine").robots)
    assert released == [[1, 2], []]
    assert fleet.held_by(idle.db, "s-other") == [3, 4, 5]
    assert idle.count(allocations, allocations.c.released_at.is_(None)) == 3
    assert fleet.allocation_overlaps(idle.db) == []


def test_the_database_refuses_a_second_open_allocation(idle: Mission) -> None:
    with idle.db.begin() as conn:
        fleet.allocate(conn, "s-one", 1)
    insert = allocations.insert().values(
        robot_id=1, saga_id="s-two", allocated_at=utcnow(), released_at=None
    )
    with pytest.raises(sa.exc.IntegrityError), idle.db.begin() as conn:
        conn.execute(insert)
    assert fleet.allocation_overlaps(idle.db) == []


def test_a_shortage_changes_nothing(idle: Mission) -> None:
    with idle.db.begin() as conn:
        fleet.allocate(conn, "s-first", 6)
    with (
        pytest.raises(fleet.NotEnoughRobots, match="3 requested, 2 of 8 free"),
        idle.db.begin() as conn,
    ):
        fleet.allocate(conn, "s-second", 3)
    assert fleet.held_by(idle.db, "s-second") == []
    assert idle.count(allocations, allocations.c.saga_id == "s-second") == 0


def test_concurrent_missions_never_share_a_robot(mission: Mission) -> None:
    started = [
        mission.engine.start("slam", {"robots": 3, "area": f"site{i}", "seed": i}) for i in range(4)
    ]
    records = [mission.system.queries.wait(s.saga_id, timeout=40) for s in started]

    for record in records:
        assert record.status == "completed" or "not enough robots" in (record.reason or "")
    assert any(record.status == "completed" for record in records)
    assert fleet.allocation_overlaps(mission.db) == []
    assert mission.held() == []


@pytest.mark.postgres
def test_concurrent_missions_on_postgresql(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with slam_system(tmp_path, monkeypatch, pg_url, fleet_size=6) as system:
        system.start_embedded()
        mission = Mission(system, tmp_path / "maps")
        started = [
            mission.engine.start("slam", {"robots": 2, "area": f"dock{i}", "seed": i})
            for i in range(5)
        ]
        started.append(
            mission.engine.start("slam", {"robots": 2, "area": "dock", "fail_at": "explore"})
        )
        records = [mission.system.queries.wait(s.saga_id, timeout=60) for s in started]
        for record in records[:-1]:
            assert record.status == "completed" or "not enough robots" in (record.reason or "")
        assert records[-1].status == "compensated"
        assert any(record.status == "completed" for record in records)
        assert len(fleet.list_fleet(mission.db)) == 6
        assert fleet.allocation_overlaps(mission.db) == []
        assert mission.held() == []
    databases.reset()
