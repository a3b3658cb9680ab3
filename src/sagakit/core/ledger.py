"""An in-memory ledger of one saga: its head and every instance, loaded as the log loads them.

It is the saga log in miniature, with no I/O: `load` answers `Needs` exactly as the SQL
store does, `apply` writes a decision back, and `replay` folds a sequence of events into a
ledger. The property tests drive `decide` through it, and a saga's stored history replayed
through it must give back the stored state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .definition import Saga
from .events import Decision, Event, Needs
from .machine import decide, needs
from .state import SagaState, StepState, StepStatus

_FAILED = (StepStatus.FAILED, StepStatus.COMPENSATION_FAILED)


@dataclass
class Ledger:
    """One saga's head and all of its step instances."""

    state: SagaState
    steps: dict[str, StepState] = field(default_factory=dict)

    def load(self, needs: Needs) -> dict[str, StepState]:
        """The instances `needs` names, as the saga log would return them."""
        found = {name: self.steps[name] for name in needs.names if name in self.steps}
        if needs.undo_top:
            waiting = [s for s in self.steps.values() if s.order is not None]
            if waiting:
                top = max(waiting, key=lambda s: s.order or 0)
                found[top.name] = top
        if needs.failed:
            found.update({n: s for n, s in self.steps.items() if s.status in _FAILED})
        return found

    def apply(self, decision: Decision) -> None:
        """Write a decision: the new head and every instance it made or changed."""
        self.state = decision.state
        for st in decision.steps:
            self.steps[st.name] = st

    def send(self, saga: Saga, event: Event) -> Decision:
        """Decide `event` on what `load` gives, and apply the decision."""
        decision = decide(saga, self.state, self.load(needs(event)), event)
        if not decision.ignored:
            self.apply(decision)
        return decision

    def find(self, name: str) -> StepState | None:
        """The instance called `name`, if the saga has reached it."""
        return self.steps.get(name)


def replay(saga: Saga, head: SagaState, events: Iterable[Event]) -> Ledger:
    """Fold `events` into a fresh ledger that starts from `head` (a pending saga)."""
    ledger = Ledger(head)
    for event in events:
        ledger.send(saga, event)
    return ledger
