"""sagakit: durable sagas on Celery.

Define a `Saga` of `Step`s whose actions and compensations are Celery tasks registered with
`saga_task`; run it with a `System` (built from SAGAKIT_* settings) or an `Engine`.

The names below are imported on first use, not with the package: ``sagakit --help`` and
``sagakit list`` must not pay for Celery and the engine (the command line is a subpackage,
so importing it runs this module first).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adoption import adopt
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
        VersionNotDeployed,
    )
    from .core.state import SagaStatus, StepStatus
    from .engine import Engine, StartResult
    from .runtime.context import StepContext
    from .runtime.tasks import saga_task
    from .settings import Settings, load_settings
    from .system import System

_HOMES = {
    "sagakit.adoption": ("adopt",),
    "sagakit.core.definition": ("Parallel", "RetryPolicy", "Saga", "Step", "StepKind"),
    "sagakit.core.errors": (
        "DefinitionError",
        "InvalidInput",
        "InvalidTransition",
        "NonRetryableError",
        "RetryableError",
        "SagaError",
        "SagaNotFound",
        "UnknownSagaType",
        "VersionNotDeployed",
    ),
    "sagakit.core.state": ("SagaStatus", "StepStatus"),
    "sagakit.engine": ("Engine", "StartResult"),
    "sagakit.runtime.context": ("StepContext",),
    "sagakit.runtime.tasks": ("saga_task",),
    "sagakit.settings": ("Settings", "load_settings"),
    "sagakit.system": ("System",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    # Definitions
    "Parallel",
    "RetryPolicy",
    "Saga",
    "Step",
    "StepKind",
    # Step code
    "StepContext",
    "adopt",
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
    "VersionNotDeployed",
]


def __getattr__(name: str) -> Any:
    home = _HOME_OF.get(name)
    if home is None:
        raise AttributeError(f"module 'sagakit' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
