"""Sagas on real `sagakit worker` processes, PostgreSQL and Redis, read back from the log."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sagakit import InvalidTransition, SagaNotFound
from sagakit.core.state import SagaState, SagaStatus, StepState, StepStatus
from sagakit.messages import OutboxMessage, seal
from sagakit.runtime.dispatch import RedisDispatcher
from sagakit.store.log import Snapshot
from tests.support.client import Client
from tests.support.cluster import Cluster, wait_for
from tests.support.history import assert_compensated_in_reverse, started, steps_with
from tests.support.workload import TIMEOUT

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]


def run(
    client: Client,
    saga_type: str,
    faults: dict[str, list[str]] | None = None,
    timeout: float = 60.0,
    **extra: object,
) -> str:
    saga_id = client.start(saga_type, {"faults": faults or {}, **extra}).saga_id
    client.wait(saga_id, timeout=timeout)
    return saga_id


def test_four_step_saga_completes_in_order(client: Client, cluster: Cluster) -> None:
    saga_id = run(client, "linear")
    record = client.get(saga_id)
    assert record.status == "completed", cluster.logs()
    assert steps_with(client, saga_id, "step_completed") == ["a", "b", "c", "d"]
    assert steps_with(client, saga_id, "step_compensated") == []
    attempts = client.attempts(saga_id)
    assert all(a.worker and a.started_at and a.finished_at for a in attempts)
    assert [a.task_id for a in attempts] == [
        f"{saga_id}.01.a.fwd.1",
        f"{saga_id}.02.b.fwd.1",
        f"{saga_id}.03.c.fwd.1",
        f"{saga_id}.04.d.fwd.1",
    ]


@pytest.mark.parametrize(
    ("failing", "undone"),
    [
        ("a", []),
        ("b", ["a"]),
        ("c", ["b", "a"]),
        ("d", ["c", "b", "a"]),
    ],
)
def test_failure_at_each_step_compensates_earlier_steps_in_reverse(
    client: Client, failing: str, undone: list[str]
) -> None:
    saga_id = run(client, "linear", {failing: ["fail"]})
    record = client.get(saga_id)
    assert record.status == "compensated"
    assert record.failed_step == failing
    assert assert_compensated_in_reverse(client, saga_id) == undone


def test_parallel_group_with_a_failing_branch(client: Client) -> None:
    saga_id = run(client, "fanout", {"b2": ["slow:0.3", "fail"], "b3": ["slow:1.0"]})
    assert client.get(saga_id).status == "compensated"
    completed = steps_with(client, saga_id, "step_completed")
    assert set(completed) == {"a", "b1", "b3"}
    # b3 was still running when b2 failed: it was waited for, then undone first.
    assert assert_compensated_in_reverse(client, saga_id)[0] == "b3"
    assert "d" not in {a.step for a in client.attempts(saga_id)}  # never scheduled


def test_transient_failures_are_retried_and_recorded_as_attempts(client: Client) -> None:
    saga_id = run(client, "linear", {"b": ["transient:2"]})
    assert client.get(saga_id).status == "completed"
    b_attempts = [a for a in client.attempts(saga_id) if a.step == "b"]
    assert [(a.attempt, a.status) for a in b_attempts] == [
        (1, "failed"),
        (2, "failed"),
        (3, "succeeded"),
    ]
    assert "flaked on attempt 1" in (b_attempts[0].error or "")
    assert "Traceback" in (b_attempts[0].traceback or "")
    assert steps_with(client, saga_id, "step_failed") == ["b", "b"]


def test_failed_compensation_needs_an_operator_then_retry_resumes(
    client: Client, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("the compensation of b fails while this file exists")
    saga_id = run(client, "linear", {"d": ["fail"], "b": [f"undo_fail_while:{blocker}"]})
    record = client.get(saga_id)
    assert record.status == "failed"
    assert record.failed_step == "b"
    assert "compensation of step 'b' failed after 3 attempts" in (record.reason or "")
    assert steps_with(client, saga_id, "step_compensated") == ["c"]

    blocker.unlink()
    client.retry(saga_id)
    record = client.wait(saga_id, timeout=30)
    assert record.status == "compensated"
    assert steps_with(client, saga_id, "step_compensated") == ["c", "b", "a"]
    assert "saga_resumed" in [h.event for h in client.history(saga_id)]
    b_undo = [
        a.attempt
        for a in client.attempts(saga_id)
        if a.step == "b" and a.direction == "compensation"
    ]
    assert b_undo == [1, 2, 3, 4]


def test_a_compensation_that_fails_for_good_is_resolved_by_an_operator(
    client: Client, tmp_path: Path
) -> None:
    blocker = tmp_path / "gone"
    blocker.write_text("the compensation of b fails while this file exists")
    saga_id = run(client, "linear", {"d": ["fail"], "b": [f"undo_fail_while:{blocker}"]})
    assert client.get(saga_id).status == "failed"

    client.system.engine.resolve(saga_id, "b", "released by hand: its service is gone", "ana")
    record = client.wait(saga_id, timeout=30)
    assert record.status == "compensated"
    assert record.failed_step == "d"
    assert steps_with(client, saga_id, "step_compensated") == ["c", "a"]
    [resolved] = [h for h in client.history(saga_id) if h.event == "compensation_resolved"]
    assert resolved.step == "b"
    assert resolved.detail is not None
    assert resolved.detail["by"] == "ana"
    assert resolved.detail["reason"] == "released by hand: its service is gone"
    assert [s["step"] for s in resolved.detail["scheduled"]] == ["a"]  # what it went on with
    saga = client.system.engine.sagas["linear"]
    queries = client.system.queries
    assert queries.replay(saga, saga_id) == queries.stored(saga_id)


def test_starting_twice_with_one_idempotency_key_returns_one_saga(client: Client) -> None:
    key = f"order-{uuid.uuid4()}"
    first = client.start("linear", {}, idempotency_key=key)
    second = client.start("linear", {"ignored": True}, idempotency_key=key)
    assert first.created and not second.created
    assert second.saga_id == first.saga_id
    assert client.wait(first.saga_id, timeout=30).status == "completed"
    assert len(steps_with(client, first.saga_id, "saga_started")) == 1


def test_cancel_waits_for_the_running_step_then_compensates(client: Client) -> None:
    saga_id = client.start("linear", {"faults": {"b": ["slow:1.5"]}}).saga_id
    wait_for(lambda: started(client, saga_id, "b"), 20, "b to start")
    client.cancel(saga_id, "customer changed their mind")
    record = client.wait(saga_id, timeout=30)
    assert record.status == "compensated"
    assert record.reason == "cancelled: customer changed their mind"
    assert steps_with(client, saga_id, "step_completed") == ["a", "b"]
    assert steps_with(client, saga_id, "step_compensated") == ["b", "a"]
    assert "c" not in {a.step for a in client.attempts(saga_id)}  # never scheduled


def test_cancel_after_the_pivot_is_refused(client: Client) -> None:
    saga_id = client.start("pivoted", {"faults": {"r": ["slow:1.5"]}}).saga_id
    wait_for(lambda: started(client, saga_id, "r"), 20, "r to start")
    with pytest.raises(InvalidTransition, match="pivot"):
        client.cancel(saga_id)
    assert client.wait(saga_id, timeout=30).status == "completed"


def test_retriable_step_after_pivot_is_retried_until_it_succeeds(client: Client) -> None:
    saga_id = run(client, "pivoted", {"r": ["transient:4"]})
    assert client.get(saga_id).status == "completed"
    assert len([a for a in client.attempts(saga_id) if a.step == "r"]) == 5
    assert steps_with(client, saga_id, "step_compensated") == []


def test_fan_out_over_input_items(client: Client) -> None:
    saga_id = run(
        client, "mapped", {"each[1]": ["fail"], "each[0]": ["slow:0.5"]}, items=["x", "y", "z"]
    )
    assert client.get(saga_id).status == "compensated"
    compensated = assert_compensated_in_reverse(client, saga_id)
    assert set(compensated) == {"a", "each[0]", "each[2]"}


def test_a_forged_message_runs_no_step(client: Client, cluster: Cluster) -> None:
    """A message the log never scheduled, carrying a made-up saga state under a seal made
    without the log's key, makes no step run."""
    system = client.system
    saga_id = uuid.uuid4().hex
    real = system.engine.sagas["linear"]
    now = datetime.now(UTC)
    message = system.engine.message(
        real, saga_id, "a", "action", 1, None, f"{saga_id}.01.a.fwd.1", now, {}
    )
    running = SagaStatus.RUNNING
    head = SagaState(saga_id, "linear", real.version, running, stage=0, busy=1, open=1)
    step = StepState("a", "a", 0, status=StepStatus.RUNNING, attempt=1)
    state = Snapshot(head, 0, {"a": step}).encode()
    header = seal(b"guessed", message.task_id, message.kwargs, state)
    assert system.engine.dispatcher is not None
    assert system.engine.dispatcher.send([replace(message, state=header)]) == []

    def about_it() -> list[str]:
        return [line for line in cluster.logs().splitlines() if saga_id in line]

    wait_for(
        lambda: any("delivery refused" in line for line in about_it()),
        30,
        "the workers to drop the forged message",
    )
    lines = about_it()
    assert any("not sealed by the saga log" in line for line in lines), lines
    assert not any("performing" in line for line in lines), lines
    with pytest.raises(SagaNotFound):
        client.get(saga_id)


def test_a_message_of_an_unknown_saga_type_runs_only_if_the_log_scheduled_it(
    client: Client, cluster: Cluster, tmp_path: Path
) -> None:
    """A worker bound to the saga log that lacks the message's saga type (a forged type,
    or a definition deployed elsewhere) asks the log before it runs the step."""
    system = client.system
    saga_id = uuid.uuid4().hex
    touched = tmp_path / "ran"
    message = system.engine.message(
        system.engine.sagas["linear"],
        saga_id,
        "a",
        "action",
        1,
        None,
        f"{saga_id}.01.a.fwd.1",
        datetime.now(UTC),
        {"faults": {"a": [f"done:{touched}"]}},
    )
    ghost = replace(message, kwargs={**message.kwargs, "saga_type": "ghost"}, state=None)
    assert system.engine.dispatcher is not None
    assert system.engine.dispatcher.send([ghost]) == []

    def about_it() -> list[str]:
        return [line for line in cluster.logs().splitlines() if saga_id in line]

    wait_for(
        lambda: any("delivery refused: the saga log never scheduled it" in x for x in about_it()),
        30,
        "the workers to refuse the message",
    )
    assert not touched.exists(), about_it()


def test_a_late_redelivery_of_a_finished_attempt_runs_nothing(
    client: Client, cluster: Cluster
) -> None:
    """A copy of a step message restored long after its attempt finished (kombu marks it
    redelivered: a visibility timeout, a worker that died holding it) is checked against
    the log before it runs, even though it carries a well-sealed state."""
    system = client.system
    saga_id = run(client, "linear")
    assert client.get(saga_id).status == "completed", cluster.logs()
    real = system.engine.sagas["linear"]
    now = datetime.now(UTC)
    message = system.engine.message(
        real, saga_id, "a", "action", 1, None, f"{saga_id}.01.a.fwd.1", now, {"faults": {}}
    )
    running = SagaStatus.RUNNING
    head = SagaState(saga_id, "linear", real.version, running, stage=0, busy=1, open=1)
    step = StepState("a", "a", 0, status=StepStatus.RUNNING, attempt=1)
    state = Snapshot(head, 0, {"a": step}).encode()
    header = seal(system.engine.log.state_key(), message.task_id, message.kwargs, state)
    dispatcher = system.engine.dispatcher
    assert isinstance(dispatcher, RedisDispatcher)
    envelope = json.loads(dispatcher.envelope(replace(message, state=header)))
    envelope["headers"]["redelivered"] = True  # what kombu's restore writes
    envelope["properties"]["delivery_info"]["redelivered"] = True
    dispatcher.client.lpush(message.queue, json.dumps(envelope))

    def about_it() -> list[str]:
        return [line for line in cluster.logs().splitlines() if saga_id in line]

    wait_for(
        lambda: any("delivery ignored: it is not current" in line for line in about_it()),
        30,
        "the workers to drop the late copy",
    )
    performed = [line for line in about_it() if " a #1] performing" in line]
    assert len(performed) == 1, performed


class Holding:
    """A dispatcher that takes the engine's messages and sends none (the test sends them)."""

    publishes_events = False

    def __init__(self) -> None:
        self.held: list[OutboxMessage] = []

    def send(
        self,
        messages: Sequence[OutboxMessage],
        entries: Sequence[object] = (),
        *,
        sent_at: datetime | None = None,
    ) -> list[OutboxMessage]:
        self.held.extend(messages)
        return []


def _without(kwargs: Mapping[str, Any], key: str) -> Any:
    return {k: v for k, v in kwargs.items() if k != key}


def _push_spoiled(client: Client, spoil: Callable[[list[Any], dict[str, Any]], Any]) -> str:
    """Start a linear saga and push its first message to the queue spoiled by `spoil`
    (given the body's args and kwargs, it returns them changed) instead of the real one."""
    engine = client.system.engine
    real = engine.dispatcher
    assert isinstance(real, RedisDispatcher)
    holding = Holding()
    engine.dispatcher = holding
    try:
        saga_id = client.start("linear", {"faults": {}}).saga_id
    finally:
        engine.dispatcher = real
    [message] = holding.held
    assert message.task_id == f"{saga_id}.01.a.fwd.1"
    envelope = json.loads(real.envelope(message))
    args, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
    args, kwargs = spoil(args, kwargs)
    envelope["body"] = base64.b64encode(json.dumps([args, kwargs, embed]).encode()).decode()
    real.client.lpush(message.queue, json.dumps(envelope))
    return saga_id


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        (lambda a, kw: (a, _without(kw, "saga_type")), "saga_type is missing"),
        (lambda a, kw: (a, {**kw, "attempt": 7}), "attempt is 7, the task id says 1"),
        (lambda a, kw: (a, {**kw, "input": "x"}), "input must be an object"),
        (lambda a, kw: ([kw["saga_id"]], kw), "a step message takes keyword arguments only"),
    ],
    ids=["no-saga-type", "wrong-attempt", "input-not-an-object", "positional-args"],
)
def test_a_malformed_step_message_is_a_failed_attempt_at_once_and_retried(
    client: Client,
    cluster: Cluster,
    spoil: Callable[[list[Any], dict[str, Any]], Any],
    why: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A step message with its attempt's task id but a body that cannot be decoded is
    recorded as a failed attempt with the reason, and the step's policy retries it: the
    attempt is never left outstanding until its timeout."""
    saga_id = _push_spoiled(client, spoil)
    pushed_at = time.monotonic()
    record = client.wait(saga_id, timeout=TIMEOUT)  # past it, the attempt timed out
    recovery = time.monotonic() - pushed_at
    assert record.status == "completed", cluster.logs()
    a = [x for x in client.attempts(saga_id) if x.step == "a"]
    assert [(x.attempt, x.status) for x in a] == [(1, "failed"), (2, "succeeded")]
    assert a[0].error == f"malformed step message: {why}"
    assert steps_with(client, saga_id, "step_timed_out") == []
    with capsys.disabled():
        print(f"\nmalformed message ({why}): failed at once, saga completed in {recovery:.2f}s")


@pytest.mark.parametrize("field", ["attempt", "saga_id", "step", "direction"])
def test_a_message_missing_what_its_task_id_says_runs_as_the_task_id_says(
    client: Client, cluster: Cluster, field: str
) -> None:
    """The task id names the saga, the step, the direction and the attempt; the kwargs
    repeat them, and a body that leaves one out is read by its task id."""
    saga_id = _push_spoiled(client, lambda a, kw: (a, _without(kw, field)))
    assert client.wait(saga_id, timeout=TIMEOUT).status == "completed", cluster.logs()
    a = [x for x in client.attempts(saga_id) if x.step == "a"]
    assert [(x.attempt, x.status) for x in a] == [(1, "succeeded")]
