"""Saga definitions: ordered stages of steps, validated when they are defined.

A definition is data. Each element of `Saga.steps` is a *stage*: a single `Step`, or a
`Parallel` group whose steps run concurrently (the next stage waits for all of them). A step
with `for_each` fans out at run time into one instance per item of a list found in the saga's
data (the saga input or an earlier step's output), like a Step Functions Map state.

Step kinds follow Garcia-Molina & Salem and Richardson: *compensatable* steps can be undone
by their compensation; the *pivot* is the go/no-go step (once it succeeds the saga runs to
completion); *retriable* steps come after the pivot, are never compensated and are retried
until they succeed.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from .errors import DefinitionError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
"""Step, group and saga names: lower-case identifiers (they appear in Celery task ids)."""

ARGUMENT_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""Keyword argument names of an existing task (`Step.args`)."""

DEFAULT_QUEUE = "celery"
"""Queue of a step that names none and that no route of the app's ``task_routes`` names."""


class StepKind(StrEnum):
    """What a step means for the saga's ability to roll back."""

    COMPENSATABLE = "compensatable"
    PIVOT = "pivot"
    RETRIABLE = "retriable"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how often a failed attempt is tried again."""

    max_attempts: int | None = 3
    """Attempts in all, the first included; None retries until success."""
    initial_interval: float = 1.0
    """Seconds before the second attempt."""
    backoff: float = 2.0
    """Multiplier applied to the interval after each attempt."""
    max_interval: float = 60.0
    """Upper bound of the interval before jitter, in seconds."""
    jitter: float = 0.2
    """Fraction of the interval added or removed at random (deterministic per attempt)."""
    non_retryable: tuple[str, ...] = ()
    """Exception class names that fail the step at once (NonRetryableError always does)."""

    def allows(self, attempts_used: int) -> bool:
        """Tell whether another attempt may follow `attempts_used` attempts."""
        return self.max_attempts is None or attempts_used < self.max_attempts

    def delay(self, attempt: int, key: str) -> float:
        """Seconds to wait before attempt `attempt + 1`, jittered by a hash of `key`."""
        try:
            grown = self.initial_interval * self.backoff ** (attempt - 1)
        except OverflowError:  # retried without bound: the interval is long since capped
            grown = self.max_interval if self.initial_interval > 0 else 0.0
        base = min(grown, self.max_interval)
        spread = (zlib.crc32(f"{key}:{attempt}".encode()) % 2001 - 1000) / 1000.0
        return max(0.0, base * (1.0 + self.jitter * spread))

    def validate(self, where: str) -> str | None:
        """Return a problem description, or None when the policy is sound."""
        if self.max_attempts is not None and self.max_attempts < 1:
            return f"{where}.max_attempts must be at least 1 (or None for unbounded)"
        if self.initial_interval < 0 or self.max_interval < 0:
            return f"{where} intervals must not be negative"
        if self.backoff < 1:
            return f"{where}.backoff must be at least 1"
        if not 0 <= self.jitter <= 1:
            return f"{where}.jitter must be between 0 and 1"
        return None


DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=5, initial_interval=1.0)


@dataclass(frozen=True, slots=True)
class Step:
    """One local transaction of a saga, run as a named Celery task on its service's queue.

    Actions and compensations are delivered at least once: both must be idempotent on
    `(saga_id, step)` (see `sagakit.idempotency`).
    """

    name: str
    action: str
    """Celery task name of the forward work, e.g. ``robots.allocate``."""
    compensation: str | None = None
    """Celery task name that undoes the action; required for compensatable steps."""
    queue: str | None = None
    """Queue of the service that runs the action and the compensation. None: the queue
    the app's ``task_routes`` give the action's task (`routed`), else ``celery``."""
    kind: StepKind = StepKind.COMPENSATABLE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY
    timeout: float | None = 300.0
    """Seconds an attempt may run before it counts as timed out (and may have taken effect)."""
    for_each: str | None = None
    """Fan out over a list: ``input.<key>`` or ``<earlier step>.<key>``."""
    reads: tuple[str, ...] | None = None
    """What the step's message carries for workers that cannot reach the saga log:
    ``"input"`` and/or names of earlier steps whose outputs the step reads. By default
    (None) a message carries only ids and the fan-out item, and a worker bound to the saga
    log loads ``ctx.input`` and ``ctx.results`` on demand, one key at a time."""
    args: Mapping[str, str] | None = None
    """Makes the action an existing, unchanged Celery task (``@app.task def charge(order_id,
    amount)``): its keyword arguments, each taken from a path, ``input.<key>...``,
    ``<earlier step>.<key>...``, ``item...`` (a fan-out instance's item) or ``saga_id``;
    a path without keys passes the whole value. None: the action is a ``@saga_task``."""
    compensation_args: Mapping[str, str] | None = None
    """Likewise for the compensation, whose paths may also name the step itself (its own
    output: ``charge.charge_id``)."""

    @property
    def queue_name(self) -> str:
        """The queue the step's messages go to."""
        return self.queue or DEFAULT_QUEUE

    def plain(self, direction: str) -> Mapping[str, str] | None:
        """The argument paths of the action or compensation if it is an existing task."""
        return self.args if direction == "action" else self.compensation_args

    @property
    def effective_retry(self) -> RetryPolicy:
        """The retry policy in force: retriable steps are retried until they succeed."""
        if self.kind is StepKind.RETRIABLE and self.retry.max_attempts is not None:
            return RetryPolicy(
                max_attempts=None,
                initial_interval=self.retry.initial_interval,
                backoff=self.retry.backoff,
                max_interval=self.retry.max_interval,
                jitter=self.retry.jitter,
                non_retryable=self.retry.non_retryable,
            )
        return self.retry


@dataclass(frozen=True, slots=True)
class Parallel:
    """A stage whose steps run concurrently; the saga moves on when all have succeeded."""

    name: str
    steps: tuple[Step, ...]

    def __init__(self, name: str, steps: Sequence[Step]) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "steps", tuple(steps))


Stage = Step | Parallel


@dataclass(frozen=True, slots=True)
class Saga:
    """A named, versioned saga definition: an ordered list of stages."""

    name: str
    steps: tuple[Stage, ...]
    version: int = 1
    timeout: float | None = None
    """Seconds from start after which an unfinished saga is cancelled (before its pivot)."""
    description: str = ""
    input_model: Any = None
    """Optional input validator: a pydantic model class (anything with `model_validate`)."""
    eager: bool = False
    """Run each next step in the worker that just finished the one before, when that
    worker can (`runtime.eager`): one Celery message for a run of steps instead of one per
    step. Off by default: then every step is a Celery task of its own."""
    for_each_paths: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """Every ``for_each`` path of the definition, once each."""
    _by_name: dict[str, tuple[int, Step]] = field(init=False, repr=False, compare=False)
    _last_use: dict[str, int] = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        name: str,
        steps: Sequence[Stage],
        *,
        version: int = 1,
        timeout: float | None = None,
        description: str = "",
        input_model: Any = None,
        eager: bool = False,
    ) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "steps", tuple(steps))
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "description", description)
        object.__setattr__(self, "input_model", input_model)
        object.__setattr__(self, "eager", eager)
        _validate(self)
        by_name = {step.name: (i, step) for i, step in enumerate(self.all_steps(), start=1)}
        last_use: dict[str, int] = {}
        for stage in range(len(self.steps)):
            for step in self.stage_steps(stage):
                if step.for_each is not None:
                    last_use[step.for_each] = stage
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_last_use", last_use)
        object.__setattr__(self, "for_each_paths", tuple(last_use))

    def stage_steps(self, stage: int) -> tuple[Step, ...]:
        """Return the steps of stage number `stage`."""
        element = self.steps[stage]
        return element.steps if isinstance(element, Parallel) else (element,)

    def all_steps(self) -> Iterator[Step]:
        """Yield every step in definition order."""
        for stage in range(len(self.steps)):
            yield from self.stage_steps(stage)

    def step(self, name: str) -> Step:
        """Return the step named `name` (an instance name like ``explore[2]`` works too)."""
        return self._by_name[name.split("[", 1)[0]][1]

    def position(self, name: str) -> int:
        """Return the 1-based position of a step in definition order (used in task ids)."""
        return self._by_name[name.split("[", 1)[0]][0]

    def last_use(self, path: str) -> int:
        """The last stage that fans out over `path` (-1 if none does)."""
        return self._last_use.get(path, -1)

    @property
    def queues(self) -> frozenset[str]:
        """Every queue a step of this saga uses."""
        return frozenset(step.queue_name for step in self.all_steps())

    def routed(self, route: Callable[[str], str | None]) -> Saga:
        """This definition with each step that names no queue sent where `route` (the
        app's ``task_routes``) sends its action's task; unrouted ones go to ``celery``."""
        stages: list[Stage] = []
        for element in self.steps:
            if isinstance(element, Parallel):
                stages.append(Parallel(element.name, [_routed(s, route) for s in element.steps]))
            else:
                stages.append(_routed(element, route))
        return Saga(
            self.name,
            stages,
            version=self.version,
            timeout=self.timeout,
            description=self.description,
            input_model=self.input_model,
            eager=self.eager,
        )


def _routed(step: Step, route: Callable[[str], str | None]) -> Step:
    if step.queue is not None:
        return step
    return replace(step, queue=route(step.action) or DEFAULT_QUEUE)


def _validate(saga: Saga) -> None:
    problem = _find_problem(saga)
    if problem is not None:
        raise DefinitionError(saga.name, problem)


def _find_problem(saga: Saga) -> str | None:
    if not NAME_PATTERN.match(saga.name):
        return f"name {saga.name!r} must match {NAME_PATTERN.pattern}"
    if saga.version < 1:
        return "version must be at least 1"
    if saga.timeout is not None and saga.timeout <= 0:
        return "timeout must be positive"
    if not saga.steps:
        return "a saga needs at least one step"
    seen: set[str] = set()
    sources: set[str] = set()
    phase = StepKind.COMPENSATABLE
    elements: tuple[object, ...] = saga.steps  # checked at run time: callers may be untyped
    for index, element in enumerate(elements):
        if not isinstance(element, Step | Parallel):
            return f"stage {index} is {type(element).__name__}, not a Step or Parallel"
        if isinstance(element, Parallel):
            if not element.steps:
                return f"parallel group {element.name!r} is empty"
            if element.name in seen or not NAME_PATTERN.match(element.name):
                return f"group name {element.name!r} is duplicated or malformed"
            seen.add(element.name)
        for step in saga.stage_steps(index):
            problem = _step_problem(step, seen, sources, isinstance(element, Parallel))
            if problem is not None:
                return problem
            seen.add(step.name)
            if step.kind is StepKind.COMPENSATABLE and phase is not StepKind.COMPENSATABLE:
                return f"compensatable step {step.name!r} comes after the pivot"
            if step.kind is StepKind.PIVOT and phase is not StepKind.COMPENSATABLE:
                return f"pivot step {step.name!r} comes after another pivot or retriable step"
            if step.kind is not StepKind.COMPENSATABLE:
                phase = step.kind
        kinds = {step.kind for step in saga.stage_steps(index)}
        if isinstance(element, Parallel) and {StepKind.COMPENSATABLE, StepKind.RETRIABLE} <= kinds:
            return f"group {element.name!r} mixes compensatable and retriable steps"
        # Only a plain step of an earlier stage has one output a later for_each can read.
        sources.update(s.name for s in saga.stage_steps(index) if s.for_each is None)
    return None


def _reads_problem(step: Step, seen: set[str]) -> str | None:
    reads: object = step.reads  # checked at run time: callers may be untyped
    if reads is None:
        return None
    if not isinstance(reads, tuple) or not all(isinstance(r, str) for r in reads):
        return f"step {step.name!r} reads must be a tuple of names"
    for name in reads:
        if name != "input" and name not in seen:
            return f"step {step.name!r} reads {name!r}: expected 'input' or an earlier step"
    return None


def _args_problem(step: Step, sources: set[str]) -> str | None:
    for where, mapping in (("args", step.args), ("compensation_args", step.compensation_args)):
        given: object = mapping  # checked at run time: callers may be untyped
        if given is None:
            continue
        if not isinstance(given, Mapping):
            return f"step {step.name!r} {where} must map argument names to paths"
        for argument, path in given.items():
            if not isinstance(argument, str) or not ARGUMENT_PATTERN.match(argument):
                return f"step {step.name!r} {where}: {argument!r} is not an argument name"
            own = where == "compensation_args"
            if not isinstance(path, str) or not _path_ok(path, step, sources, own=own):
                return (
                    f"step {step.name!r} {where}[{argument!r}]={path!r} must be 'input', "
                    "'saga_id', 'item' (fan-out steps), or an earlier step"
                    + (" or the step itself" if own else "")
                    + ", followed by '.<key>' as deep as needed"
                )
    if step.compensation_args is not None and not step.compensation:
        return f"step {step.name!r} has compensation_args but no compensation"
    return None


def _path_ok(path: str, step: Step, sources: set[str], *, own: bool) -> bool:
    source, *keys = path.split(".")
    if not all(keys):
        return False
    if source == "saga_id":
        return not keys
    if source == "item":
        return step.for_each is not None
    return source == "input" or source in sources or (own and source == step.name)


def _step_problem(step: object, seen: set[str], sources: set[str], in_group: bool) -> str | None:
    if not isinstance(step, Step):
        return f"{step!r} is not a Step"
    if not NAME_PATTERN.match(step.name):
        return f"step name {step.name!r} must match {NAME_PATTERN.pattern}"
    if step.name in seen:
        return f"step name {step.name!r} is used twice"
    kind: object = step.kind  # checked at run time: callers may be untyped
    if not isinstance(kind, StepKind):
        return f"step {step.name!r} kind {step.kind!r} is not a StepKind"
    if not step.action:
        return f"step {step.name!r} has no action task name"
    if step.queue is not None and not step.queue:
        return f"step {step.name!r} has an empty queue name"
    if step.kind is StepKind.COMPENSATABLE and not step.compensation:
        return f"compensatable step {step.name!r} has no compensation"
    if step.kind is not StepKind.COMPENSATABLE and step.compensation:
        return f"{step.kind} step {step.name!r} cannot have a compensation (it is never undone)"
    if step.kind is StepKind.PIVOT and (in_group or step.for_each):
        return f"pivot step {step.name!r} must be a single step, not a group or fan-out"
    if step.timeout is not None and step.timeout <= 0:
        return f"step {step.name!r} timeout must be positive"
    if step.for_each is not None:
        source, _, key = step.for_each.partition(".")
        if not key or (source != "input" and source not in sources):
            return (
                f"step {step.name!r} for_each={step.for_each!r} must be 'input.<key>' "
                "or '<earlier step>.<key>'"
            )
    problem = _reads_problem(step, seen) or _args_problem(step, sources)
    if problem is not None:
        return problem
    for where, policy in (("retry", step.retry), ("compensation_retry", step.compensation_retry)):
        problem = policy.validate(f"step {step.name!r} {where}")
        if problem is not None:
            return problem
    return None
