"""Workers finishing parallel branches at the same instant cannot break a saga."""

from __future__ import annotations

import threading

import pytest

from sagakit import Parallel, Saga, Step
from tests.support.rig import SAGAS, Rig

BRANCHES = ("b1", "b2", "b3", "b4")
RACE = Saga(
    "race",
    [
        Step("a", "svc.a", "svc.undo_a"),
        Parallel("group", [Step(b, f"svc.{b}", f"svc.undo_{b}") for b in BRANCHES]),
        Step("d", "svc.d", "svc.undo_d"),
    ],
)


@pytest.mark.parametrize("sagas", [12])
def test_simultaneous_branch_outcomes_advance_the_saga_exactly_once(
    db_url: str, sagas: int
) -> None:
    rig = Rig(db_url, {**SAGAS, "race": RACE})
    ids = [rig.engine.start("race", {}).saga_id for _ in range(sagas)]
    for saga_id in ids:
        rig.complete(rig.dispatcher.for_saga(saga_id)[0])
    branches = [m for m in rig.dispatcher.sent if m.kwargs["step"] in BRANCHES]
    assert len(branches) == sagas * len(BRANCHES)

    # One thread per branch of every saga, released together, each with the state its
    # message carries (the same for every branch): with siblings in flight, each outcome
    # is applied under the saga's row lock.
    barrier = threading.Barrier(len(branches))
    errors: list[BaseException] = []
    snapshots = [rig.check(m) for m in branches]

    def finish(index: int) -> None:
        message = branches[index]
        try:
            barrier.wait(timeout=30)
            rig.complete(message, {"branch": message.kwargs["step"]}, snapshots[index])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(len(branches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []

    for saga_id in ids:
        stored = rig.queries.stored(saga_id)
        outputs = {s.state.name: s.output for s in rig.queries.steps(saga_id)}
        assert {b: outputs[b] for b in BRANCHES} == {b: {"branch": b} for b in BRANCHES}
        sent_d = [m for m in rig.dispatcher.for_saga(saga_id) if m.task_name == "svc.d"]
        assert len(sent_d) == 1  # the stage advanced once, not zero or twice
        orders = sorted(stored.steps[b].order or 0 for b in BRANCHES)
        assert orders == [2, 3, 4, 5]  # each took effect at its own place in undo order
        assert (stored.state.open, stored.state.busy, stored.state.stage) == (1, 1, 2)
        completed = [h for h in rig.queries.history(saga_id) if h.event == "step_completed"]
        assert len(completed) == 1 + len(BRANCHES)
        assert rig.queries.replay(RACE, saga_id) == stored
