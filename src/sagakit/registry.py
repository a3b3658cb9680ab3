"""Find saga definitions in the modules named by the SAGAKIT_IMPORTS setting.

Several versions of one saga type may be defined at once (``Saga("order", ...,
version=2)`` beside version 1): every one found is registered, new starts take the newest,
and a saga is advanced only by the version it started with (`Engine.definition`). A module
may also set ``task_routes`` (Celery's setting, e.g. ``task_routes = app.conf.task_routes``
of the service's app): steps that name no queue go where those routes send their tasks.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from .core.definition import Saga
from .core.errors import DefinitionError, SagaError


class ImportFailed(SagaError):
    """A module named in SAGAKIT_IMPORTS could not be imported."""

    def __init__(self, module: str, why: str) -> None:
        super().__init__(
            f"SAGAKIT_IMPORTS: cannot import {module!r} ({why}); run from the project root "
            "or set SAGAKIT_IMPORTS to modules on the Python path"
        )
        self.module = module


def hooks(modules: Iterable[str], attribute: str) -> list[Callable[..., Any]]:
    """The callables named `attribute` in `modules` (e.g. ``register_cli``), in order.

    A module that cannot be imported contributes nothing: `discover` reports it.
    """
    found = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        hook = getattr(module, attribute, None)
        if callable(hook):
            found.append(hook)
    return found


def discover(modules: Iterable[str]) -> dict[str, Saga]:
    """The newest version of each saga type the modules define (see `discover_all`)."""
    return newest(discover_all(modules))


def discover_all(modules: Iterable[str]) -> list[Saga]:
    """Import `modules` and collect every Saga object they hold (in lists and tuples too),
    each version once. Raises DefinitionError for two different definitions of one version."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: dict[tuple[str, int], Saga] = {}
    for name in modules:
        for value in list(vars(_load(name)).values()):
            candidates = value if isinstance(value, list | tuple) else [value]
            for saga in candidates:
                if not isinstance(saga, Saga):
                    continue
                key = (saga.name, saga.version)
                if key in found and found[key] != saga:
                    raise DefinitionError(
                        saga.name,
                        f"version {saga.version} is defined twice, differently (in {name} "
                        "and before it): give the new definition a new version",
                    )
                found[key] = saga
    return list(found.values())


def newest(sagas: Iterable[Saga]) -> dict[str, Saga]:
    """The newest version of each saga type among `sagas`."""
    latest: dict[str, Saga] = {}
    for saga in sagas:
        if saga.name not in latest or saga.version > latest[saga.name].version:
            latest[saga.name] = saga
    return latest


def task_routes(modules: Iterable[str]) -> list[Any]:
    """The ``task_routes`` the modules set, in order (Celery's setting, each a dict, a
    router function or a list of them)."""
    found: list[Any] = []
    for name in modules:
        routes = getattr(_load(name), "task_routes", None)
        if routes is None:
            continue
        found.extend(routes if isinstance(routes, list | tuple) else [routes])
    return found


def _load(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportFailed(name, str(exc)) from exc
