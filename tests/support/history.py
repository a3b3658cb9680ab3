"""Read what happened to a saga from its stored transition history."""

from __future__ import annotations

from tests.support.client import Client


def steps_with(client: Client, saga_id: str, event: str) -> list[str]:
    """Step names of the history entries called `event`, in order."""
    return [h.step or "" for h in client.history(saga_id) if h.event == event]


def assert_compensated_in_reverse(client: Client, saga_id: str) -> list[str]:
    """Every completed step was compensated, once, in reverse order of completion."""
    completed = steps_with(client, saga_id, "step_completed")
    compensated = steps_with(client, saga_id, "step_compensated")
    assert compensated == list(reversed(completed)), (completed, compensated)
    return compensated


def started(client: Client, saga_id: str, step: str, attempt: int = 1) -> bool:
    """Whether a worker has begun `step`'s attempt (it is running, or it has finished)."""
    return any(
        a.step == step and a.attempt == attempt and a.status != "scheduled"
        for a in client.attempts(saga_id)
    )
