"""sagakit: durable sagas on Celery.

Define a `Saga` of `Step`s whose actions and compensations are Celery tasks registered with
`saga_task`; run it with a `System` (built from SAGAKIT_* settings) or an `Engine`.
"""

from .core.definition import Parallel, RetryPolicy, Saga, Step, StepKind
from .core.errors import (
    DefinitionError,
    InvalidInput,
    InvalidTransition,
    NonRetryableError,
    RetryableError,
    SagaError,
    SagaNotFound,
    UnknownSagaType,
)
from .core.machine import SagaStatus, StepStatus
from .engine import Engine, StartResult
from .runtime.tasks import StepContext, saga_task
from .settings import Settings, load_settings
from .system import System

__all__ = [
    # Definitions
    "Parallel",
    "RetryPolicy",
    "Saga",
    "Step",
    "StepKind",
    # Step code
    "StepContext",
    "saga_task",
    # Running
    "Engine",
    "Settings",
    "StartResult",
    "System",
    "load_settings",
    # State
    "SagaStatus",
    "StepStatus",
    # Errors
    "DefinitionError",
    "InvalidInput",
    "InvalidTransition",
    "NonRetryableError",
    "RetryableError",
    "SagaError",
    "SagaNotFound",
    "UnknownSagaType",
]
