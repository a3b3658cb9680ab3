"""What a step's code is told about its saga: `StepContext`, with reads on demand."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class LazyInput(Mapping[str, Any]):
    """The saga's input, loaded from the saga log on first use."""

    def __init__(self, load: Callable[[], Mapping[str, Any]]) -> None:
        self._load = load
        self._data: Mapping[str, Any] | None = None

    def _get(self) -> Mapping[str, Any]:
        if self._data is None:
            self._data = self._load()
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class LazyResults(Mapping[str, Any]):
    """Earlier steps' outputs by instance name, each loaded from the saga log when read.

    Reading one key costs one indexed lookup; iterating loads them all.
    """

    def __init__(
        self,
        one: Callable[[str], tuple[bool, Any]],
        every: Callable[[], Mapping[str, Any]],
    ) -> None:
        self._one = one
        self._every = every
        self._cache: dict[str, Any] = {}
        self._all: Mapping[str, Any] | None = None

    def __getitem__(self, key: str) -> Any:
        if self._all is not None:
            return self._all[key]
        if key not in self._cache:
            found, value = self._one(key)
            if not found or value is None:
                raise KeyError(key)
            self._cache[key] = value
        return self._cache[key]

    def _load_all(self) -> Mapping[str, Any]:
        if self._all is None:
            self._all = {k: v for k, v in self._every().items() if v is not None}
        return self._all

    def __iter__(self) -> Iterator[str]:
        return iter(self._load_all())

    def __len__(self) -> int:
        return len(self._load_all())


class Unreachable(Mapping[str, Any]):
    """Stands in for data a worker without the saga log was not sent."""

    def __init__(self, what: str, step: str) -> None:
        self._why = (
            f"step {step!r} reads {what}, but this worker cannot reach the saga log: "
            f"declare it with Step(reads=(...)) so its messages carry it"
        )

    def __getitem__(self, key: str) -> Any:
        raise LookupError(self._why)

    def __iter__(self) -> Iterator[str]:
        raise LookupError(self._why)

    def __len__(self) -> int:
        raise LookupError(self._why)


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a step's action or compensation is told about its saga."""

    saga_id: str
    saga_type: str
    step: str
    """The step instance: ``explore`` or, for a fan-out branch, ``explore[2]``."""
    attempt: int
    direction: str
    """``action`` or ``compensation``."""
    input: Mapping[str, Any]
    results: Mapping[str, Any] = field(default_factory=dict)
    """Outputs of the saga's steps that have finished, by step instance name."""
    item: Any = None
    """This instance's item, for a step that fans out with ``for_each``."""
    task_id: str = ""

    @property
    def key(self) -> str:
        """Idempotency key of this step in this saga (the same for every attempt)."""
        return f"{self.saga_id}:{self.step}:{self.direction}"
