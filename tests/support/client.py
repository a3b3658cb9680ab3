"""A test's handle on a running sagakit: start through the engine, read through the queries."""

from __future__ import annotations

from typing import Any

from sagakit import StartResult, System
from sagakit.core.events import Decision
from sagakit.queries import AttemptView
from sagakit.store import HistoryRecord, SagaRecord, StepRecord


class Client:
    """Starts, cancels and retries sagas, and reads them back, the way the API does."""

    def __init__(self, system: System) -> None:
        self.system = system

    def start(
        self, saga_type: str, input: dict[str, Any] | None = None, **options: Any
    ) -> StartResult:
        return self.system.engine.start(saga_type, input, **options)

    def cancel(self, saga_id: str, reason: str = "cancelled by a test") -> Decision:
        return self.system.engine.cancel(saga_id, reason)

    def retry(self, saga_id: str) -> Decision:
        return self.system.engine.retry(saga_id)

    def wait(self, saga_id: str, timeout: float = 60.0) -> SagaRecord:
        return self.system.queries.wait(saga_id, timeout=timeout)

    def get(self, saga_id: str) -> SagaRecord:
        return self.system.queries.get(saga_id)

    def attempts(self, saga_id: str) -> list[AttemptView]:
        return self.system.queries.attempts(saga_id)

    def history(self, saga_id: str) -> list[HistoryRecord]:
        return self.system.queries.history(saga_id)

    def steps(self, saga_id: str) -> list[StepRecord]:
        return self.system.queries.steps(saga_id)
