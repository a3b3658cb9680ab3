"""The wire between the saga log and the workers: task ids and step messages, both halves.

A step message is an ordinary Celery message to the service's own task (``robots.allocate``)
on its queue. Its task id is deterministic and says which attempt it is,
``<saga id>.<position>.<instance>.<fwd|comp>.<attempt>`` (``3f2a.03.explore-1.fwd.2``), so
Flower's search finds a whole saga by its id and a redelivery is recognised for what it is.
Its kwargs carry ids, the fan-out item and what the step declared it reads
(`Step.reads`); never a copy of every earlier output.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NotRequired, TypedDict

from .core.events import Direction
from .core.state import JSON, instance_name, parse_instance

_KIND: dict[Direction, str] = {"action": "fwd", "compensation": "comp"}
_DIRECTION: dict[str, Direction] = {v: k for k, v in _KIND.items()}


class StepKwargs(TypedDict):
    """The kwargs of a step message."""

    saga_id: str
    saga_type: str
    step: str
    attempt: int
    direction: Direction
    item: NotRequired[JSON]
    input: NotRequired[dict[str, JSON]]
    results: NotRequired[dict[str, JSON]]


@dataclass(frozen=True, slots=True)
class TaskId:
    """A step message's task id, taken apart."""

    saga_id: str
    position: int
    step: str
    direction: Direction
    attempt: int

    def __str__(self) -> str:
        step, index = parse_instance(self.step)
        part = step if index is None else f"{step}-{index}"
        return f"{self.saga_id}.{self.position:02d}.{part}.{_KIND[self.direction]}.{self.attempt}"


def task_id(saga_id: str, position: int, step: str, direction: Direction, attempt: int) -> str:
    """The deterministic task id of one attempt."""
    return str(TaskId(saga_id, position, step, direction, attempt))


def parse_task_id(value: str) -> TaskId | None:
    """Take a sagakit task id apart; None for any other task id."""
    parts = value.split(".")
    if len(parts) != 5 or parts[3] not in _DIRECTION:
        return None
    saga_id, position, part, kind, attempt = parts
    step, _, index = part.partition("-")
    try:
        name = instance_name(step, int(index) if index else None)
        parse_instance(name)
        return TaskId(saga_id, int(position), name, _DIRECTION[kind], int(attempt))
    except ValueError:
        return None


TIMEOUT_HEADER = "sagakit_timeout"
"""Message header with the step's timeout in seconds: the worker's heartbeat reports it with
the attempt, so the sweeper knows when a running attempt has overrun."""


STEP_HEADER = "sagakit_step"
"""Message header of a step whose task is an existing, unchanged Celery task (`Step.args`):
the step's `StepKwargs`, which a saga task has as its kwargs. The task's own kwargs are the
message's; the worker's task signals (`runtime.adopted`) find the attempt by this header."""

CHECKED_HEADER = "sagakit_checked"
"""Set by the worker's main process on an existing task's request, never by a sender: the
state it found good for this attempt (the seal held, or the saga log said so), for the pool
process that runs the task to decide the outcome on. Removed from every received message."""


STATE_HEADER = "sagakit_state"
"""Message header with the saga as the transition that sent the message left it (the head,
its version, the attempt's instance and the next to undo, as JSON): the worker decides the
attempt's outcome on it without reading the saga first (`store.log.Snapshot`). Absent from
messages the sweeper sends, and while the head holds lists a later ``for_each`` fans out
over: the worker reads the saga then.

The header is sealed (`seal`) with a key kept in the saga log, over the task id, the kwargs
and the state: a worker trusts it only if the seal holds, so whoever can write to the broker
but not read the saga log cannot make a worker run a step the log never scheduled."""


def seal(key: bytes, task_id: str, kwargs: Mapping[str, Any], state: str) -> str:
    """The STATE_HEADER value for `state`: ``<mac>.<state>``, HMAC-SHA256 (128 bits)."""
    return f"{_mac(key, task_id, kwargs, state)}.{state}"


def unseal(key: bytes, task_id: str, kwargs: Mapping[str, Any], header: Any) -> str | None:
    """The state a sealed header holds, if its seal is good for this task id and kwargs."""
    if not isinstance(header, str):
        return None
    mac, dot, state = header.partition(".")
    if not dot or not hmac.compare_digest(mac, _mac(key, task_id, kwargs, state)):
        return None
    return state


SIGNATURE_HEADER = "sagakit_signature"
"""Message header with a signature of the message (task id, kwargs, carried state) made with
the deployment's shared key (`Settings.message_key`, ``SAGAKIT_MESSAGE_KEY``), set only when
a key is configured. Workers bound to the saga log need none (the log says which attempts
it scheduled); workers without it run only messages whose signature holds, and sign the
outcomes they report to the ``sagakit`` queue, which the sagakit workers check in turn."""


def signature(key: bytes, task_id: str, kwargs: Mapping[str, Any], state: str | None) -> str:
    """The SIGNATURE_HEADER value of a message: HMAC-SHA256 (128 bits), hex."""
    return _mac(key, task_id, kwargs, state or "")


def signed(key: bytes, task_id: str, kwargs: Mapping[str, Any], state: Any, header: Any) -> bool:
    """Whether `header` is the signature of this message under `key`."""
    if not isinstance(header, str) or (state is not None and not isinstance(state, str)):
        return False
    return hmac.compare_digest(header, signature(key, task_id, kwargs, state))


def signed_kwargs(kwargs: Mapping[str, Any], call: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """What a message's signature covers besides its task id and state: the step's kwargs,
    and an existing task's own kwargs with them (`OutboxMessage.call`)."""
    return kwargs if call is None else {**kwargs, "call": dict(call)}


def _mac(key: bytes, task_id: str, kwargs: Mapping[str, Any], state: str) -> str:
    body = json.dumps(kwargs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    signed = "\n".join((task_id, body, state)).encode()
    return hmac.new(key, signed, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One step message to send: written in a transition's transaction, sent after it."""

    saga_id: str
    task_id: str
    task_name: str
    queue: str
    kwargs: StepKwargs
    timeout: float | None
    """The step's timeout in seconds (see TIMEOUT_HEADER and `CeleryDispatcher`)."""
    not_before: datetime
    state: str | None = None
    """The STATE_HEADER to send with the message, if any."""
    call: Mapping[str, Any] | None = None
    """An existing task's own keyword arguments (`Step.args`): they are the message's
    kwargs, and `kwargs` travel in the STEP_HEADER instead."""
    trace: Mapping[str, str] | None = None
    """The trace context to send as headers (``traceparent``), with tracing on."""
    carrier: str | None = None
    """Not sent: the task id of the delivery that runs this attempt where it is (an eager
    saga's next step, `runtime.eager`)."""


class BadMessage(ValueError):
    """A step message that cannot be decoded; `why` says what is wrong with it."""

    def __init__(self, task_id: str, why: str) -> None:
        super().__init__(f"step message {task_id}: {why}")
        self.task_id = task_id
        self.why = why


def decode(task: str, kwargs: Mapping[str, Any]) -> StepKwargs:
    """Check a received step message against its task id. Raises BadMessage."""
    parsed = parse_task_id(task)
    if parsed is None:
        raise BadMessage(task, "the task id is not a sagakit step task id")
    expected = {
        "saga_id": parsed.saga_id,
        "step": parsed.step,
        "attempt": parsed.attempt,
        "direction": parsed.direction,
    }
    for key, value in expected.items():
        if key in kwargs and kwargs[key] != value:
            raise BadMessage(task, f"{key} is {kwargs[key]!r}, the task id says {value!r}")
    saga_type = kwargs.get("saga_type")
    if not isinstance(saga_type, str) or not saga_type:
        raise BadMessage(task, "saga_type is missing")
    decoded: StepKwargs = {
        "saga_id": parsed.saga_id,
        "saga_type": saga_type,
        "step": parsed.step,
        "attempt": parsed.attempt,
        "direction": parsed.direction,
    }
    if "item" in kwargs:
        decoded["item"] = kwargs["item"]
    for key in ("input", "results"):
        value = kwargs.get(key)
        if value is not None:
            if not isinstance(value, dict):
                raise BadMessage(task, f"{key} must be an object")
            decoded[key] = value  # type: ignore[literal-required]
    return decoded
