"""The SLAM mission, choreographed: the same services and local transactions, run by events.

No orchestrator: each service reacts to the events on the choreography's stream in its
own consumer group (``sagakit participant robots``, ...), running the very step functions
the orchestrated mission runs (`steps`), in a transaction that also holds its inbox and
outbox rows:

    mission_requested -> robots allocate  -> robots_allocated
    robots_allocated  -> planning plans   -> routes_planned
    routes_planned    -> exploration, one per robot -> sector_explored x N
    sector_explored   -> mapping, once all N are in  -> map_integrated
    map_integrated    -> robots return    -> robots_returned        (completed)

A ``*_failed`` event sends compensation backwards: each service that already acted undoes
its own work (`Script.should_undo` says when) and says so (``exploration_aborted``,
``plan_discarded``, ``robots_released``), which tells the service before it. Failure
injection is the orchestrated mission's (`faults`): business failures become ``*_failed``
events; anything else raises, and the event is delivered again (``transient``), up to the
dead-letter stream. The tracker folds it all into the saga log as ``slam_choreographed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sagakit import NonRetryableError, StepContext, StepKind
from sagakit.choreography import Delivery, Local, Participant, Script, Track, step_function

from . import databases
from .saga import STEP_TIMEOUT, MissionInput
from .settings import Service

script = Script(
    "slam_choreographed",
    starts="mission_requested",
    twin="slam",
    input_model=MissionInput,
    description="The SLAM mission, choreographed: services react to each other's events.",
    tracks=(
        Track(
            "allocate_robots",
            "robots",
            done="robots_allocated",
            failed="allocation_failed",
            undone="robots_released",
            timeout=STEP_TIMEOUT,
        ),
        Track(
            "plan_routes",
            "planning",
            done="routes_planned",
            failed="planning_failed",
            undone="plan_discarded",
            timeout=STEP_TIMEOUT,
        ),
        Track(
            "explore",
            "exploration",
            done="sector_explored",
            failed="exploration_failed",
            undone="exploration_aborted",
            timeout=STEP_TIMEOUT,
            for_each="allocate_robots.robots",
        ),
        Track(
            "integrate_maps",
            "mapping",
            done="map_integrated",
            failed="mapping_failed",
            undone="map_rolled_back",
            timeout=STEP_TIMEOUT,
        ),
        Track(
            "release_robots",
            "robots",
            done="robots_returned",
            timeout=None,
            kind=StepKind.RETRIABLE,
        ),
    ),
)


def _database(service: Service) -> Any:
    return lambda: databases.current().engine(service)


robots = Participant("robots", _database(Service.ROBOTS))
planning = Participant("planning", _database(Service.PLANNING))
exploration = Participant("exploration", _database(Service.EXPLORATION))
mapping = Participant("mapping", _database(Service.MAPPING))
participants = [robots, planning, exploration, mapping]


def _run(
    d: Delivery,
    task: str,
    step: str,
    direction: str = "action",
    results: Mapping[str, Any] | None = None,
    item: Any = None,
) -> Any:
    """Run the orchestrated mission's step function `task` for this event's saga."""
    ctx = StepContext(
        saga_id=d.event.saga_id,
        saga_type=d.event.saga_type,
        step=step,
        attempt=d.attempt,
        direction=direction,
        input=d.event.input,
        results=dict(results or {}),
        item=item,
    )
    return step_function(task)(ctx)


def _results(d: Delivery) -> dict[str, Any]:
    value = d.event.data.get("results")
    return dict(value) if isinstance(value, Mapping) else {}


def _act(
    d: Delivery, local: Local, task: str, step: str, results: Mapping[str, Any] | None = None
) -> Any:
    """Run a step's action; on a business failure emit the step's failure event and return
    None. Anything else raises: the event is delivered again."""
    try:
        return _run(d, task, step, results=results)
    except NonRetryableError as exc:
        track = script.track(step)
        assert track.failed is not None
        local.emit(track.failed, {"input": d.event.input, "steps": [step], "error": str(exc)})
        return None


def _undo(d: Delivery, local: Local, task: str, step: str, names: list[str]) -> None:
    """Undo `step` (each of `names`) if this event says so, and say it was undone."""
    if not script.should_undo(step, d.event):
        return
    for name in names:
        _run(d, task, name, "compensation")
    track = script.track(step)
    assert track.undone is not None
    local.emit(track.undone, {"input": d.event.input, "steps": names})


def _robots_of(d: Delivery) -> int:
    return MissionInput.model_validate(dict(d.event.input)).robots


# --- robots ------------------------------------------------------------------------------


@robots.on("mission_requested")
def allocate(d: Delivery, local: Local) -> None:
    output = _act(d, local, "robots.allocate", "allocate_robots")
    if output is not None:
        data = {"input": d.event.input, "output": output, "results": {"allocate_robots": output}}
        local.emit("robots_allocated", data)


@robots.on(*script.undo_triggers("allocate_robots"))
def release(d: Delivery, local: Local) -> None:
    _undo(d, local, "robots.release", "allocate_robots", ["allocate_robots"])


@robots.on("map_integrated")
def give_back(d: Delivery, local: Local) -> None:
    output = _run(d, "robots.return", "release_robots")
    local.emit("robots_returned", {"input": d.event.input, "output": output})


# --- planning ----------------------------------------------------------------------------


@planning.on("robots_allocated")
def plan(d: Delivery, local: Local) -> None:
    results = _results(d)
    output = _act(d, local, "planning.plan", "plan_routes", results)
    if output is not None:
        results["plan_routes"] = output
        local.emit("routes_planned", {"input": d.event.input, "output": output, "results": results})


@planning.on(*script.undo_triggers("plan_routes"))
def discard(d: Delivery, local: Local) -> None:
    _undo(d, local, "planning.discard_plan", "plan_routes", ["plan_routes"])


# --- exploration -------------------------------------------------------------------------


@exploration.on("routes_planned")
def explore(d: Delivery, local: Local) -> None:
    """One exploration per robot, each its own savepoint: a branch that fails for good
    leaves the others' scans, which the failure event then has undone."""
    results = _results(d)
    robots_out = results.get("allocate_robots") or {}
    done, failed, error = [], [], ""
    for index, robot in enumerate(robots_out.get("robots", [])):
        name = f"explore[{index}]"
        try:
            output = _run(d, "exploration.explore", name, results=results, item=robot)
        except NonRetryableError as exc:
            failed.append(name)
            error = error or str(exc)
            continue
        done.append(name)
        data = {
            "input": d.event.input,
            "steps": [name],
            "output": output,
            "results": {"plan_routes": results.get("plan_routes"), name: output},
        }
        local.emit("sector_explored", data)
    if failed:
        data = {"input": d.event.input, "steps": failed, "error": error, "undo": done}
        local.emit("exploration_failed", data)


@exploration.on(*script.undo_triggers("explore"))
def abort(d: Delivery, local: Local) -> None:
    names = [f"explore[{i}]" for i in range(_robots_of(d))]
    _undo(d, local, "exploration.abort", "explore", names)


# --- mapping -----------------------------------------------------------------------------


@mapping.on("sector_explored")
def integrate(d: Delivery, local: Local) -> None:
    """Keep each sector; once every robot's is in, integrate the map."""
    results = _results(d)
    (name,) = d.event.steps
    parts = local.gather("sectors", name, results.get(name), total=_robots_of(d))
    if parts is None:
        return
    merged = {"plan_routes": results.get("plan_routes"), **parts}
    output = _act(d, local, "mapping.integrate", "integrate_maps", merged)
    if output is not None:
        local.emit("map_integrated", {"input": d.event.input, "output": output})


@mapping.on(*script.undo_triggers("integrate_maps"))
def roll_back(d: Delivery, local: Local) -> None:
    _undo(d, local, "mapping.rollback", "integrate_maps", ["integrate_maps"])
