"""Errors raised by sagakit.

* SagaError                - base class for every error raised by sagakit
  x DefinitionError        - a Saga or Step is malformed (raised when it is defined)
  x SagaNotFound           - no saga with that id
  x UnknownSagaType        - no saga definition registered under that name
    x VersionNotDeployed   - that saga type is registered, but not that version of it
  x InvalidTransition      - an operation the saga's status does not allow
  x InvalidInput           - input rejected at the boundary (which field, why)
* NonRetryableError        - raised by step code: fail now, skip remaining attempts
* RetryableError           - raised by step code: an expected, transient failure; try again
"""

from __future__ import annotations


class SagaError(Exception):
    """Base class for every error raised by sagakit."""


class DefinitionError(SagaError):
    """A saga definition is malformed."""

    def __init__(self, saga: str, problem: str) -> None:
        super().__init__(f"saga {saga!r}: {problem}")
        self.saga = saga
        self.problem = problem


class SagaNotFound(SagaError):
    """No saga with the given id exists."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(f"no saga with id {saga_id!r}")
        self.saga_id = saga_id


class UnknownSagaType(SagaError):
    """No saga definition is registered under the given name."""

    def __init__(self, saga_type: str, known: list[str]) -> None:
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"unknown saga type {saga_type!r} (known: {listed})")
        self.saga_type = saga_type
        self.known = known


class VersionNotDeployed(UnknownSagaType):
    """The saga runs (or a start pinned) a definition version this process does not have.

    A saga is advanced only by the version it started with: until that version is deployed
    again, its events wait and its attempts' messages are not run.
    """

    def __init__(self, saga_type: str, version: int, deployed: list[int]) -> None:
        listed = ", ".join(f"v{v}" for v in sorted(deployed)) or "none"
        SagaError.__init__(
            self,
            f"saga type {saga_type!r} version {version} is not deployed here "
            f"(deployed: {listed}); deploy it again to advance its sagas",
        )
        self.saga_type = saga_type
        self.version = version
        self.known = [saga_type]
        self.deployed = deployed


class InvalidTransition(SagaError):
    """The saga's current status does not allow the requested operation."""

    def __init__(self, saga_id: str, status: str, operation: str, why: str = "") -> None:
        detail = f": {why}" if why else ""
        status = str(status)  # a StrEnum's repr would show its class
        super().__init__(f"cannot {operation} saga {saga_id!r} in status {status!r}{detail}")
        self.saga_id = saga_id
        self.status = status
        self.operation = operation


class InvalidInput(SagaError):
    """Input was rejected at the boundary; `field` names what was wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NonRetryableError(Exception):
    """Raised by step code to fail the step now, without further attempts.

    It does not derive from SagaError: it is the step author's signal, not sagakit's failure.
    Any other exception raised by step code counts as a retryable failure.
    """


class RetryableError(Exception):
    """Raised by step code for an expected, transient failure: try the step again later.

    It is retried by the step's retry policy and logged as one warning line without a
    traceback. Like `NonRetryableError`, it does not derive from SagaError: it is the step
    author's signal. Any exception other than `NonRetryableError` is retried; raise this one
    when the failure is foreseen (a resource is busy, a precondition does not hold yet), so
    that it does not read as a bug.
    """
