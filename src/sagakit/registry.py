"""Find saga definitions in the modules named by the SAGAKIT_IMPORTS setting."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from .core.definition import Saga
from .core.errors import SagaError


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
    """Import `modules` (and their `sagas` submodule variable) and collect Saga objects."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: dict[str, Saga] = {}
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ImportFailed(name, str(exc)) from exc
        for value in list(vars(module).values()):
            candidates = value if isinstance(value, list | tuple) else [value]
            for saga in candidates:
                if isinstance(saga, Saga):
                    found[saga.name] = saga
    return found
