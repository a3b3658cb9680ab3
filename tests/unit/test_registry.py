"""Finding definitions: every version of a saga type, and the modules' task routes."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest

from sagakit import DefinitionError, Saga, Step
from sagakit.registry import discover, discover_all, task_routes


def _v(version: int, *steps: str) -> Saga:
    return Saga("order", [Step(s, f"svc.{s}", f"svc.undo_{s}") for s in steps], version=version)


@pytest.fixture
def modules() -> Iterator[dict[str, types.ModuleType]]:
    made: dict[str, types.ModuleType] = {}
    yield made
    for name in made:
        sys.modules.pop(name, None)


def _module(made: dict[str, types.ModuleType], name: str, **values: object) -> str:
    module = types.ModuleType(name)
    vars(module).update(values)
    sys.modules[name] = made[name] = module
    return name


def test_every_version_is_found_and_the_newest_is_the_default(
    modules: dict[str, types.ModuleType],
) -> None:
    old, new = _v(1, "a", "b"), _v(2, "a", "c", "b")
    first = _module(modules, "defs_v1", order=old)
    second = _module(modules, "defs_v2", order=new, again=[old], task_routes={"svc.*": "svc"})
    assert sorted(s.version for s in discover_all([first, second])) == [1, 2]
    assert discover([second, first]) == {"order": new}
    assert task_routes([first, second]) == [{"svc.*": "svc"}]


def test_one_version_defined_twice_differently_is_refused(
    modules: dict[str, types.ModuleType],
) -> None:
    first = _module(modules, "defs_a", order=_v(1, "a"))
    second = _module(modules, "defs_b", order=_v(1, "a", "b"))
    with pytest.raises(DefinitionError, match="version 1 is defined twice, differently"):
        discover_all([first, second])
