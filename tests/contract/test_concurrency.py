"""Two workers finishing parallel branches at the same instant cannot break a saga."""

from __future__ import annotations

import threading

import pytest

from sagakit import Engine, Parallel, Saga, Step
from sagakit.core.machine import StepSucceeded
from sagakit.store import SqlSagaStore
from tests.support.recording import RecordingDispatcher

BRANCHES = ("b1", "b2", "b3", "b4")
FANOUT = Saga(
    "race",
    [
        Step("a", "svc.a", "svc.undo_a"),
        Parallel("group", [Step(b, f"svc.{b}", f"svc.undo_{b}") for b in BRANCHES]),
        Step("d", "svc.d", "svc.undo_d"),
    ],
)


@pytest.mark.parametrize("sagas", [12])
def test_simultaneous_branch_outcomes_advance_the_saga_exactly_once(
    store: SqlSagaStore, sagas: int
) -> None:
    dispatcher = RecordingDispatcher()
    engine = Engine(store, {"race": FANOUT}, dispatcher)
    ids = [engine.start("race", {}).saga_id for _ in range(sagas)]
    for saga_id in ids:
        engine.record(saga_id, StepSucceeded("a", 1))
    for message in list(dispatcher.sent):
        assert store.claim(message.task_id, worker="w", now=engine.clock(), grace=1) is not None

    # One thread per branch of every saga, released together.
    barrier = threading.Barrier(len(ids) * len(BRANCHES))
    errors: list[BaseException] = []

    def finish(saga_id: str, branch: str) -> None:
        try:
            barrier.wait(timeout=30)
            engine.record(
                saga_id,
                StepSucceeded(branch, 1, {"branch": branch}),
                task_id=f"{saga_id}.0{BRANCHES.index(branch) + 2}.{branch}.fwd.1",
                attempt_status="succeeded",
            )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(s, b)) for s in ids for b in BRANCHES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []

    for saga_id in ids:
        record = store.get(saga_id)
        outputs = {s.name: s.output for s in record.state.steps if s.name in BRANCHES}
        assert outputs == {b: {"branch": b} for b in BRANCHES}  # no update was lost
        sent_d = [m for m in dispatcher.for_saga(saga_id) if m.task_name == "svc.d"]
        assert len(sent_d) == 1  # the stage advanced once, not zero or twice
        orders = sorted(s.order or 0 for s in record.state.steps if s.name in BRANCHES)
        assert orders == [2, 3, 4, 5]
        completed = [h for h in store.history(saga_id) if h.event == "step_completed"]
        assert len(completed) == 1 + len(BRANCHES)
        assert all(a.status == "succeeded" for a in store.attempts(saga_id) if a.step in BRANCHES)
