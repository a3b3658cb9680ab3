"""The script: when each step's service undoes its work, so compensation runs backwards."""

from __future__ import annotations

import pytest

from sagakit.choreography import SagaEvent, Script, Track
from sagakit.choreography.events import BadEvent
from sagakit_examples.slam.choreography import script as slam


def event(type: str, **data: object) -> SagaEvent:
    return SagaEvent(type, "s1", "slam_choreographed", data)


@pytest.mark.parametrize(
    ("step", "happened", "undo"),
    [
        # A plain failure took no effect: the step before undoes.
        ("allocate_robots", event("planning_failed"), True),
        ("plan_routes", event("planning_failed"), False),
        # A timeout may have taken effect: the step undoes itself first...
        ("plan_routes", event("planning_failed", timeout=True), True),
        ("allocate_robots", event("planning_failed", timeout=True), False),
        # ...and its undo event tells the one before.
        ("allocate_robots", event("plan_discarded"), True),
        # A fan-out whose other branches completed undoes them first.
        ("explore", event("exploration_failed", undo=["explore[0]"]), True),
        ("plan_routes", event("exploration_failed", undo=["explore[0]"]), False),
        ("plan_routes", event("exploration_failed", undo=[]), True),
        ("plan_routes", event("exploration_aborted"), True),
        ("explore", event("mapping_failed"), True),
        ("integrate_maps", event("mapping_failed"), False),
        ("integrate_maps", event("mapping_failed", timeout=True), True),
        ("allocate_robots", event("routes_planned"), False),
    ],
)
def test_who_undoes_what(step: str, happened: SagaEvent, undo: bool) -> None:
    assert slam.should_undo(step, happened) is undo
    if undo:
        assert happened.type in slam.undo_triggers(step)


def test_the_script_is_a_saga_the_core_runs_without_retries() -> None:
    saga = slam.saga()
    assert [s.name for s in saga.all_steps()] == [t.step for t in slam.tracks]
    explore = saga.step("explore")
    assert explore.action == "sector_explored" and explore.compensation == "exploration_aborted"
    assert explore.for_each == "allocate_robots.robots"
    assert explore.retry.max_attempts == 1 and explore.compensation_retry.max_attempts == 1
    assert slam.matches("exploration_failed") == [("failed", slam.track("explore[3]"))]


def test_a_step_with_nothing_after_it_undoes_only_on_its_own_failure() -> None:
    script = Script("two", "go", (Track("a", "s", done="a_done", failed="a_failed"),))
    assert script.undo_triggers("a") == ("a_failed",)
    assert not script.should_undo("a", SagaEvent("a_failed", "x", "two"))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"type": "t", "saga_id": "s", "saga_type": "x", "data": "{}"}, "'id'"),
        ({"id": "1", "type": "t", "saga_id": "s", "saga_type": "x", "data": "[1"}, "'data'"),
        ({"id": "1", "type": "t", "saga_id": "s", "saga_type": "x", "data": "[]"}, "'data'"),
    ],
)
def test_a_malformed_entry_is_refused_naming_the_field(fields: dict[str, str], named: str) -> None:
    with pytest.raises(BadEvent, match=named):
        SagaEvent.from_fields(fields)


def test_an_event_survives_the_stream() -> None:
    sent = event("robots_allocated", input={"robots": 2}, steps=["allocate_robots"])
    raw = {k.encode(): v.encode() for k, v in sent.fields().items()}
    assert SagaEvent.from_fields(raw) == sent
