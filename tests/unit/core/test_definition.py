"""Saga definitions: malformed ones are rejected when defined, sound ones are accepted."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from sagakit.core.definition import (
    DEFAULT_COMPENSATION_RETRY,
    Parallel,
    RetryPolicy,
    Saga,
    Step,
    StepKind,
)
from sagakit.core.errors import DefinitionError, SagaError


def comp(name: str, **options: Any) -> Step:
    """A compensatable step with a compensation task."""
    options.setdefault("compensation", f"svc.undo_{name}")
    return Step(name, action=f"svc.{name}", **options)


def pivot(name: str = "p", **options: Any) -> Step:
    return Step(name, action=f"svc.{name}", kind=StepKind.PIVOT, **options)


def retriable(name: str = "r", **options: Any) -> Step:
    return Step(name, action=f"svc.{name}", kind=StepKind.RETRIABLE, **options)


# Each case builds a definition that must be refused; the regex must match the problem.
MALFORMED: list[tuple[str, Callable[[], Any], str]] = [
    ("empty saga", lambda: Saga("s", []), r"at least one step"),
    ("bad saga name", lambda: Saga("Bad-Name", [comp("a")]), r"name 'Bad-Name' must match"),
    ("saga name starts with digit", lambda: Saga("1s", [comp("a")]), r"name '1s' must match"),
    ("saga version 0", lambda: Saga("s", [comp("a")], version=0), r"version must be at least 1"),
    ("saga timeout 0", lambda: Saga("s", [comp("a")], timeout=0), r"timeout must be positive"),
    (
        "saga timeout negative",
        lambda: Saga("s", [comp("a")], timeout=-1.0),
        r"timeout must be positive",
    ),
    ("stage not a step", lambda: Saga("s", ["a"]), r"stage 0 is str, not a Step or Parallel"),
    ("duplicate step names", lambda: Saga("s", [comp("a"), comp("a")]), r"'a' is used twice"),
    (
        "duplicate name inside a group",
        lambda: Saga("s", [Parallel("g", [comp("a"), comp("a")])]),
        r"'a' is used twice",
    ),
    (
        "step named like an earlier group",
        lambda: Saga("s", [Parallel("g", [comp("a"), comp("b")]), comp("g")]),
        r"'g' is used twice",
    ),
    (
        "group named like an earlier step",
        lambda: Saga("s", [comp("a"), Parallel("a", [comp("b"), comp("c")])]),
        r"group name 'a' is duplicated or malformed",
    ),
    (
        "empty parallel group",
        lambda: Saga("s", [comp("a"), Parallel("g", [])]),
        r"parallel group 'g' is empty",
    ),
    (
        "bad group name",
        lambda: Saga("s", [Parallel("G!", [comp("a")])]),
        r"group name 'G!' is duplicated or malformed",
    ),
    (
        "non-step inside a group",
        lambda: Saga("s", [Parallel("g", [comp("a"), "b"])]),
        r"'b' is not a Step",
    ),
    (
        "bad step name (upper case)",
        lambda: Saga("s", [comp("Alloc")]),
        r"step name 'Alloc' must match",
    ),
    (
        "bad step name (brackets)",
        lambda: Saga("s", [comp("a[0]")]),
        r"step name 'a\[0\]' must match",
    ),
    ("bad step name (too long)", lambda: Saga("s", [comp("a" * 64)]), r"must match"),
    ("empty step name", lambda: Saga("s", [comp("")]), r"step name '' must match"),
    (
        "no action task",
        lambda: Saga("s", [Step("a", action="", compensation="svc.undo")]),
        r"'a' has no action task name",
    ),
    ("empty queue", lambda: Saga("s", [comp("a", queue="")]), r"'a' has an empty queue name"),
    (
        "compensatable step without compensation",
        lambda: Saga("s", [comp("a", compensation=None)]),
        r"compensatable step 'a' has no compensation",
    ),
    (
        "pivot with a compensation",
        lambda: Saga("s", [comp("a"), pivot(compensation="x.y")]),
        r"pivot step 'p' cannot have a compensation",
    ),
    (
        "retriable with a compensation",
        lambda: Saga("s", [comp("a"), pivot(), retriable(compensation="x.y")]),
        r"retriable step 'r' cannot have a compensation",
    ),
    (
        "compensatable after the pivot",
        lambda: Saga("s", [comp("a"), pivot(), comp("b")]),
        r"compensatable step 'b' comes after the pivot",
    ),
    (
        "compensatable after a retriable step",
        lambda: Saga("s", [comp("a"), retriable(), comp("b")]),
        r"compensatable step 'b' comes after the pivot",
    ),
    (
        "compensatable after a retriable step in one group",
        lambda: Saga("s", [Parallel("g", [retriable(), comp("b")])]),
        r"compensatable step 'b' comes after the pivot",
    ),
    (
        "compensatable alongside a retriable step in one group",
        lambda: Saga("s", [comp("a"), Parallel("g", [comp("b"), retriable()])]),
        r"group 'g' mixes compensatable and retriable steps",
    ),
    (
        "two pivots",
        lambda: Saga("s", [comp("a"), pivot("p"), pivot("q")]),
        r"pivot step 'q' comes after another pivot",
    ),
    (
        "pivot after a retriable step",
        lambda: Saga("s", [retriable(), pivot()]),
        r"pivot step 'p' comes after another pivot or retriable step",
    ),
    (
        "pivot inside a parallel group",
        lambda: Saga("s", [comp("a"), Parallel("g", [comp("b"), pivot()])]),
        r"pivot step 'p' must be a single step, not a group",
    ),
    (
        "pivot fanned out",
        lambda: Saga("s", [comp("a"), pivot(for_each="input.items")]),
        r"pivot step 'p' must be a single step, not a group or fan-out",
    ),
    (
        "kind given as a plain string",
        lambda: Saga("s", [comp("a"), Step("p", action="svc.p", kind="pivot")]),
        r"step 'p' kind 'pivot' is not a StepKind",
    ),
    (
        "for_each over an unknown step",
        lambda: Saga("s", [comp("a", for_each="nope.items")]),
        r"for_each='nope.items' must be 'input.<key>' or '<earlier step>.<key>'",
    ),
    (
        "for_each over a later step",
        lambda: Saga("s", [comp("a", for_each="b.items"), comp("b")]),
        r"step 'a' for_each='b.items'",
    ),
    (
        "for_each over itself",
        lambda: Saga("s", [comp("a", for_each="a.items")]),
        r"step 'a' for_each='a.items'",
    ),
    (
        "for_each over a sibling in the same group",
        lambda: Saga("s", [Parallel("g", [comp("a"), comp("b", for_each="a.items")])]),
        r"step 'b' for_each='a.items'",
    ),
    (
        "for_each over a group",
        lambda: Saga("s", [Parallel("g", [comp("a"), comp("b")]), comp("c", for_each="g.items")]),
        r"step 'c' for_each='g.items'",
    ),
    (
        "for_each over a fanned-out step",
        lambda: Saga("s", [comp("a", for_each="input.xs"), comp("c", for_each="a.items")]),
        r"step 'c' for_each='a.items'",
    ),
    (
        "for_each without a key",
        lambda: Saga("s", [comp("a", for_each="input")]),
        r"for_each='input' must be",
    ),
    (
        "for_each with an empty key",
        lambda: Saga("s", [comp("a", for_each="input.")]),
        r"for_each='input\.' must be",
    ),
    (
        "step timeout 0",
        lambda: Saga("s", [comp("a", timeout=0)]),
        r"step 'a' timeout must be positive",
    ),
    (
        "step timeout negative",
        lambda: Saga("s", [comp("a", timeout=-5.0)]),
        r"step 'a' timeout must be positive",
    ),
    (
        "retry max_attempts 0",
        lambda: Saga("s", [comp("a", retry=RetryPolicy(max_attempts=0))]),
        r"step 'a' retry\.max_attempts must be at least 1",
    ),
    (
        "compensation_retry max_attempts 0",
        lambda: Saga("s", [comp("a", compensation_retry=RetryPolicy(max_attempts=0))]),
        r"step 'a' compensation_retry\.max_attempts must be at least 1",
    ),
    (
        "negative initial interval",
        lambda: Saga("s", [comp("a", retry=RetryPolicy(initial_interval=-1))]),
        r"step 'a' retry intervals must not be negative",
    ),
    (
        "negative max interval",
        lambda: Saga("s", [comp("a", compensation_retry=RetryPolicy(max_interval=-0.5))]),
        r"step 'a' compensation_retry intervals must not be negative",
    ),
    (
        "backoff below 1",
        lambda: Saga("s", [comp("a", retry=RetryPolicy(backoff=0.5))]),
        r"step 'a' retry\.backoff must be at least 1",
    ),
    (
        "jitter above 1",
        lambda: Saga("s", [comp("a", retry=RetryPolicy(jitter=1.5))]),
        r"step 'a' retry\.jitter must be between 0 and 1",
    ),
    (
        "negative jitter",
        lambda: Saga("s", [comp("a", retry=RetryPolicy(jitter=-0.1))]),
        r"step 'a' retry\.jitter must be between 0 and 1",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"), [(b, m) for _, b, m in MALFORMED], ids=[case for case, _, _ in MALFORMED]
)
def test_malformed_definition_is_refused(build: Callable[[], Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message) as raised:
        build()
    error = raised.value
    assert isinstance(error, SagaError)
    assert re.search(message, error.problem)
    assert str(error).startswith(f"saga {error.saga!r}: ")


VALID: list[tuple[str, Callable[[], Saga]]] = [
    ("single step", lambda: Saga("s", [comp("a")])),
    ("linear", lambda: Saga("s", [comp("a"), comp("b"), comp("c")])),
    (
        "parallel group",
        lambda: Saga("s", [comp("a"), Parallel("g", [comp("b"), comp("c")]), comp("d")]),
    ),
    ("one-step group", lambda: Saga("s", [Parallel("g", [comp("a")])])),
    ("for_each over input", lambda: Saga("s", [comp("a", for_each="input.items")])),
    (
        "for_each over an earlier step",
        lambda: Saga("s", [comp("a"), comp("b", for_each="a.robots")]),
    ),
    (
        "for_each over an earlier grouped step",
        lambda: Saga("s", [Parallel("g", [comp("a"), comp("b")]), comp("c", for_each="b.xs")]),
    ),
    (
        "for_each inside a group",
        lambda: Saga("s", [comp("a"), Parallel("g", [comp("b", for_each="a.xs"), comp("c")])]),
    ),
    ("pivot last", lambda: Saga("s", [comp("a"), pivot()])),
    ("pivot first", lambda: Saga("s", [pivot(), retriable()])),
    (
        "pivot then retriables",
        lambda: Saga(
            "s",
            [
                comp("a"),
                pivot(),
                retriable("r1"),
                Parallel("g", [retriable("r2"), retriable("r3")]),
                retriable("r4", for_each="p.items"),
            ],
        ),
    ),
    ("retriable without pivot", lambda: Saga("s", [comp("a"), retriable()])),
    (
        "unbounded retries and no timeouts",
        lambda: Saga(
            "s", [comp("a", retry=RetryPolicy(max_attempts=None), timeout=None)], timeout=None
        ),
    ),
    (
        "zero intervals, no jitter",
        lambda: Saga(
            "s",
            [comp("a", retry=RetryPolicy(initial_interval=0, max_interval=0, backoff=1, jitter=0))],
        ),
    ),
    ("jitter exactly 1", lambda: Saga("s", [comp("a", retry=RetryPolicy(jitter=1.0))])),
    ("longest name", lambda: Saga("s" + "x" * 62, [comp("a" + "b" * 62)])),
    ("saga timeout and version", lambda: Saga("s", [comp("a")], version=3, timeout=10.0)),
]


@pytest.mark.parametrize("build", [b for _, b in VALID], ids=[case for case, _ in VALID])
def test_sound_definition_is_accepted(build: Callable[[], Saga]) -> None:
    saga = build()
    names = [step.name for step in saga.all_steps()]
    assert len(names) == len(set(names))
    for position, name in enumerate(names, start=1):
        assert saga.position(name) == position
        assert saga.step(name).name == name


def test_accessors_of_a_full_definition() -> None:
    saga = Saga(
        "order",
        [
            comp("a", queue="qa"),
            Parallel("g", [comp("b", queue="qb"), comp("c", for_each="input.items")]),
            pivot("p"),
            retriable("r"),
        ],
    )
    assert [s.name for s in saga.stage_steps(1)] == ["b", "c"]
    assert [s.name for s in saga.all_steps()] == ["a", "b", "c", "p", "r"]
    assert saga.step("c[2]").name == "c"
    assert saga.position("c[0]") == 3
    assert saga.position("r") == 5
    assert saga.queues == frozenset({"qa", "qb", "celery"})
    with pytest.raises(KeyError):
        saga.step("g")
    with pytest.raises(KeyError):
        saga.position("zz")


def test_retriable_steps_retry_until_success() -> None:
    bounded = retriable(
        retry=RetryPolicy(max_attempts=2, initial_interval=3.0, non_retryable=("ValueError",))
    )
    policy = bounded.effective_retry
    assert policy.max_attempts is None
    assert policy.initial_interval == 3.0
    assert policy.non_retryable == ("ValueError",)
    assert policy.allows(10_000)
    plain = comp("a", retry=RetryPolicy(max_attempts=2))
    assert plain.effective_retry is plain.retry
    assert DEFAULT_COMPENSATION_RETRY.max_attempts == 5


@pytest.mark.parametrize(
    ("max_attempts", "used", "allowed"),
    [
        (1, 1, False),
        (3, 1, True),
        (3, 2, True),
        (3, 3, False),
        (None, 1_000_000, True),
    ],
)
def test_retry_policy_allows(max_attempts: int | None, used: int, allowed: bool) -> None:
    assert RetryPolicy(max_attempts=max_attempts).allows(used) is allowed


def test_delay_grows_exponentially_without_jitter() -> None:
    policy = RetryPolicy(initial_interval=0.5, backoff=3.0, max_interval=1_000.0, jitter=0.0)
    delays = [policy.delay(attempt, "k") for attempt in range(1, 7)]
    assert delays == pytest.approx([0.5 * 3**n for n in range(6)])


def test_delay_is_capped_by_max_interval() -> None:
    policy = RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=10.0, jitter=0.0)
    assert [policy.delay(a, "k") for a in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]


@pytest.mark.parametrize("attempt", [1, 100, 1_025, 5_000, 100_000])
def test_delay_does_not_overflow_for_long_retried_steps(attempt: int) -> None:
    # Retriable steps are retried until they succeed: the attempt number is unbounded.
    policy = RetryPolicy(
        max_attempts=None, initial_interval=1.0, backoff=2.0, max_interval=60.0, jitter=0.2
    )
    expected = 1.0 if attempt == 1 else 60.0
    assert expected * 0.8 <= policy.delay(attempt, "k") <= expected * 1.2
    assert RetryPolicy(initial_interval=0.0, jitter=0.0).delay(attempt, "k") == 0.0


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.2, 0.5, 1.0])
def test_delay_stays_within_the_jitter_band(jitter: float) -> None:
    policy = RetryPolicy(initial_interval=2.0, backoff=2.0, max_interval=30.0, jitter=jitter)
    for attempt in range(1, 10):
        base = min(2.0 * 2.0 ** (attempt - 1), 30.0)
        delays = [policy.delay(attempt, f"saga-{n}:step") for n in range(200)]
        assert all(base * (1 - jitter) - 1e-9 <= d <= base * (1 + jitter) + 1e-9 for d in delays)
        if jitter:
            # The hash spreads keys over the band rather than piling them on one value.
            assert len(set(delays)) > 100
            assert min(delays) < base < max(delays)


def test_delay_is_deterministic_for_the_same_key() -> None:
    policy = RetryPolicy(jitter=0.5)
    again = RetryPolicy(jitter=0.5)
    for attempt in range(1, 6):
        assert policy.delay(attempt, "s1:a") == policy.delay(attempt, "s1:a")
        assert policy.delay(attempt, "s1:a") == again.delay(attempt, "s1:a")
    assert len({policy.delay(1, f"s{n}:a") for n in range(20)}) > 1
    assert policy.delay(1, "s1:a") != policy.delay(2, "s1:a")


def test_policy_validate_reports_none_when_sound() -> None:
    assert RetryPolicy().validate("x") is None
    assert RetryPolicy(max_attempts=None, jitter=1.0, backoff=1.0).validate("x") is None
    assert RetryPolicy(max_attempts=0).validate("where") == (
        "where.max_attempts must be at least 1 (or None for unbounded)"
    )


class TestExistingTasks:
    """`Step.args`: an existing task's keyword arguments, each from a path."""

    def _saga(self, **options: object) -> Saga:
        return Saga(
            "order",
            [
                Step("reserve", "shop.reserve", "shop.release"),
                Step("charge", "shop.charge", "shop.refund", **options),  # type: ignore[arg-type]
            ],
        )

    def test_paths_name_the_input_ids_and_earlier_steps(self) -> None:
        saga = self._saga(
            args={"order_id": "saga_id", "amount": "input.order.amount", "r": "reserve"},
            compensation_args={"charge_id": "charge.charge_id", "all": "input"},
        )
        assert saga.step("charge").plain("action") == {
            "order_id": "saga_id",
            "amount": "input.order.amount",
            "r": "reserve",
        }
        assert saga.step("reserve").plain("action") is None

    @pytest.mark.parametrize(
        ("options", "problem"),
        [
            ({"args": {"x": "charge.id"}}, r"args\['x'\]='charge.id' must be"),
            ({"args": {"x": "later.id"}}, r"args\['x'\]='later.id' must be"),
            ({"args": {"x": "item"}}, r"args\['x'\]='item' must be"),
            ({"args": {"x": "saga_id.part"}}, r"args\['x'\]='saga_id.part'"),
            ({"args": {"x": "input..key"}}, r"args\['x'\]='input..key'"),
            ({"args": {"not a name": "input"}}, "'not a name' is not an argument name"),
            ({"args": ["input"]}, "args must map argument names to paths"),
            ({"args": {"x": 3}}, r"args\['x'\]=3 must be"),
        ],
    )
    def test_a_bad_path_is_told_when_defined(
        self, options: dict[str, object], problem: str
    ) -> None:
        with pytest.raises(DefinitionError, match=problem):
            self._saga(**options)

    def test_a_step_without_a_queue_goes_where_the_routes_send_its_task(self) -> None:
        saga = Saga(
            "order",
            [
                Step("reserve", "shop.reserve", "shop.release", args={}),
                Step("charge", "shop.charge", "shop.refund", queue="cards"),
            ],
        )
        assert saga.step("reserve").queue_name == "celery"
        routed = saga.routed({"shop.reserve": "stock"}.get)
        assert [s.queue for s in routed.all_steps()] == ["stock", "cards"]
        assert routed.routed(lambda _: None) == routed
