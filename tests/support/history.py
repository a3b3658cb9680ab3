"""Read what happened to a saga from its stored transition history."""

from __future__ import annotations

from sagakit import Engine


def steps_with(engine: Engine, saga_id: str, event: str) -> list[str]:
    """Step names of the history entries called `event`, in order."""
    return [h.step or "" for h in engine.history(saga_id) if h.event == event]


def assert_compensated_in_reverse(engine: Engine, saga_id: str) -> list[str]:
    """Every completed step was compensated, once, in reverse order of completion."""
    completed = steps_with(engine, saga_id, "step_completed")
    compensated = steps_with(engine, saga_id, "step_compensated")
    assert compensated == list(reversed(completed)), (completed, compensated)
    return compensated
