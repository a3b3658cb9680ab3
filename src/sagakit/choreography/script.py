"""A choreography's script: which events start a saga, complete, fail and undo each step.

The script is declared once and read by both sides: the tracker folds the events into the
saga log with it (`Script.saga` is the definition the core's state machine runs on), and
participants ask it when to undo their own work (`Script.should_undo`), so that
compensation runs backwards through the steps as it does under the orchestrator:

- a step's failure event, unless it says something took effect (``data.undo``, a fan-out
  whose other branches completed) or it is the tracker's timeout (``data.timeout``: the
  step may have taken effect), tells the *previous* step to undo;
- otherwise the failed step undoes its own work first, and its undone event tells the
  previous step to undo, and so on to the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.definition import RetryPolicy, Saga, Step, StepKind
from .events import SagaEvent

ONCE = RetryPolicy(max_attempts=1)
"""Choreographed steps are not retried by the tracker: participants redeliver instead."""


@dataclass(frozen=True, slots=True)
class Track:
    """One step as the script follows it."""

    step: str
    service: str
    done: str
    """The event that completes the step (each instance, for a fan-out)."""
    failed: str | None = None
    """The event that fails it; the tracker publishes it too, on a timeout."""
    undone: str | None = None
    """The event that says the step's work was undone."""
    timeout: float | None = 120.0
    """Seconds the tracker waits for `done` (and for `undone`) before giving up on it."""
    for_each: str | None = None
    kind: StepKind = StepKind.COMPENSATABLE


@dataclass(frozen=True)
class Script:
    """The declared shape of one choreographed saga type."""

    name: str
    starts: str
    tracks: tuple[Track, ...]
    input_model: Any = None
    twin: str | None = None
    """The orchestrated saga type of the same business transaction, if any."""
    description: str = ""
    _by_step: dict[str, Track] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._by_step.update({t.step: t for t in self.tracks})

    def saga(self) -> Saga:
        """The definition the tracker decides on: one step per track, never retried."""
        steps = [
            Step(
                t.step,
                action=t.done,
                compensation=t.undone,
                queue=f"choreography.{t.service}",
                kind=t.kind,
                retry=ONCE,
                compensation_retry=ONCE,
                timeout=None,
                for_each=t.for_each,
            )
            for t in self.tracks
        ]
        return Saga(
            self.name,
            steps,
            version=1,
            input_model=self.input_model,
            description=self.description or f"choreographed, started by {self.starts}",
        )

    def track(self, step: str) -> Track:
        """The track of `step` (``explore[2]`` names the step ``explore``). Raises KeyError."""
        return self._by_step[step.split("[", 1)[0]]

    def matches(self, type: str) -> list[tuple[str, Track]]:
        """What an event of `type` reports: ``("done" | "failed" | "undone", track)``."""
        found = []
        for t in self.tracks:
            for kind in ("done", "failed", "undone"):
                if getattr(t, kind) == type:
                    found.append((kind, t))
        return found

    def undo_triggers(self, step: str) -> tuple[str, ...]:
        """Event types after which `step`'s service may have to undo it (`should_undo`)."""
        own, after = self._around(step)
        names = [own.failed]
        if after is not None:
            names += [after.failed, after.undone]
        return tuple(n for n in names if n)

    def should_undo(self, step: str, event: SagaEvent) -> bool:
        """True if `event` means `step`'s work must be undone now."""
        own, after = self._around(step)
        took_effect = bool(event.data.get("timeout") or event.data.get("undo"))
        if event.type == own.failed:
            return took_effect
        if after is not None and event.type == after.failed:
            return not took_effect
        return after is not None and event.type == after.undone

    def _around(self, step: str) -> tuple[Track, Track | None]:
        own = self.track(step)
        index = self.tracks.index(own)
        later = [t for t in self.tracks[index + 1 :] if t.failed or t.undone]
        return own, (later[0] if later else None)
