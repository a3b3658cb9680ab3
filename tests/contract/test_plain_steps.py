"""Existing tasks as steps (`Step.args`): their messages, and what they cost the log."""

from __future__ import annotations

from sagakit import RetryPolicy, Saga, Step
from tests.support.rig import Rig

ONCE = RetryPolicy(max_attempts=1)


def _saga(name: str, plain: bool, *, from_input: bool = False) -> Saga:
    steps = []
    for i, step in enumerate(("a", "b", "c", "d")):
        options: dict[str, object] = {"retry": ONCE}
        if plain:
            args = {"order_id": "saga_id"}
            if i:
                args["previous"] = f"{'abcd'[i - 1]}.made"
            if from_input:
                args["sku"] = "input.sku"
            options |= {"args": args, "compensation_args": {"made": f"{step}.made"}}
        elif from_input:
            options["reads"] = ("input",)
        steps.append(Step(step, f"svc.{step}", f"svc.undo_{step}", **options))  # type: ignore[arg-type]
    return Saga(name, steps)


def _run(rig: Rig, saga_type: str) -> tuple[int, int]:
    """Statements and transactions of the steps of one saga run to its end."""
    saga_id = rig.engine.start(saga_type, {"sku": "book"}).saga_id
    counts = rig.engine.log.counts
    before = (counts.statements, counts.transactions)
    for step in "abcd":
        message = rig.last()
        assert message.kwargs["step"] == step
        rig.complete(message, {"made": f"{step}-{saga_id}"}, rig.carried(message))
    assert rig.queries.get(saga_id).status == "completed"
    return counts.statements - before[0], counts.transactions - before[1]


def test_an_existing_task_gets_its_own_kwargs_and_the_step_in_a_header(db_url: str) -> None:
    rig = Rig(db_url, {"plain": _saga("plain", True, from_input=True)})
    saga_id = rig.engine.start("plain", {"sku": "book"}).saga_id
    first = rig.last()
    assert first.call == {"order_id": saga_id, "sku": "book"}
    rig.complete(first, {"made": "a-1"}, rig.carried(first))
    second = rig.last()
    assert second.call == {"order_id": saga_id, "previous": "a-1", "sku": "book"}
    assert second.kwargs["step"] == "b" and second.state is not None
    rig.fail(second)
    undo = rig.last()
    assert (undo.task_name, undo.kwargs["direction"], undo.call) == (
        "svc.undo_a",
        "compensation",
        {"made": "a-1"},
    )


def test_a_missing_value_leaves_its_argument_out(db_url: str) -> None:
    rig = Rig(db_url, {"plain": _saga("plain", True, from_input=True)})
    rig.engine.start("plain", {"note": "no sku"})
    assert rig.last().call == {"order_id": rig.last().saga_id}


def test_an_existing_task_costs_the_statements_of_a_saga_task(db_url: str) -> None:
    sagas = {
        "tasks": _saga("tasks", False),
        "plain": _saga("plain", True),
        "tasks_input": _saga("tasks_input", False, from_input=True),
        "plain_input": _saga("plain_input", True, from_input=True),
    }
    rig = Rig(db_url, sagas)
    # Arguments from ids and the step just finished: nothing read, one write per step.
    assert _run(rig, "plain") == _run(rig, "tasks")
    # Arguments from the input: one read per message, as a saga task that reads the input.
    assert _run(rig, "plain_input") == _run(rig, "tasks_input")
