"""Validation at the boundary: saga ids, idempotency keys and saga input (pure).

Every rejection is an InvalidInput naming the field and why; nothing reaches the saga log
that PostgreSQL's JSON cannot hold (NUL characters) or that would be unreasonable to store
and copy around (nesting deeper than MAX_DEPTH).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import InvalidInput

SAGA_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Saga ids: they appear in Celery task ids and URLs."""

MAX_DEPTH = 64
"""Deepest nesting of objects and lists accepted in a saga's input or a step's output."""

MAX_KEY_LENGTH = 200
"""Longest idempotency key."""


def check_saga_id(saga_id: str, field: str = "saga_id") -> str:
    """Return `saga_id`. Raises InvalidInput unless it matches SAGA_ID."""
    if not SAGA_ID.match(saga_id):
        raise InvalidInput(field, f"{saga_id!r} is not a saga id (expected {SAGA_ID.pattern})")
    return saga_id


def check_idempotency_key(key: str | None) -> str | None:
    """Return `key`. Raises InvalidInput unless it is 1 to MAX_KEY_LENGTH characters."""
    if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
        raise InvalidInput("idempotency_key", f"must be 1 to {MAX_KEY_LENGTH} characters")
    return key


def validated_input(value: Any, model: Any = None) -> dict[str, Any]:
    """Check a saga's input (against `model`, a pydantic model class, if given).

    Returns the input as plain JSON data (the model's dump when there is a model).
    """
    data = json_object(value, "input")
    if model is None:
        return data
    try:
        validated = model.model_validate(data)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        if callable(errors) and errors():
            first = errors()[0]
            where = ".".join(str(part) for part in ("input", *first.get("loc", ())))
            raise InvalidInput(where, str(first.get("msg", exc))) from None
        raise InvalidInput("input", str(exc)) from None
    return json_object(validated.model_dump(mode="json"), "input")


def json_object(value: Any, field: str) -> dict[str, Any]:
    """Return `value` as a JSON object. Raises InvalidInput naming `field` otherwise."""
    if not isinstance(value, Mapping):
        raise InvalidInput(field, "must be a JSON object")
    problem = _problem(value, MAX_DEPTH)
    if problem is not None:
        raise InvalidInput(field, problem)
    try:
        return dict(json.loads(json.dumps(value)))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(field, f"must be JSON-serializable ({exc})") from None


def jsonable(value: Any) -> Any:
    """A JSON round trip of a step's output: what the saga log will store and give back.

    Values JSON cannot represent become strings; nesting deeper than MAX_DEPTH and NUL
    characters raise ValueError (the step's attempt then fails with that reason).
    """
    problem = _problem(value, MAX_DEPTH)
    if problem is not None:
        raise ValueError(f"output {problem}")
    return json.loads(json.dumps(value, default=str))


def _problem(value: Any, depth: int) -> str | None:
    """What makes `value` unfit for the saga log, or None. Iterative: no recursion limit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:  # PostgreSQL's text and jsonb cannot hold NUL
                return "must not contain NUL characters"
            continue
        if isinstance(item, Mapping):
            children: list[Any] = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        if level > depth:
            return f"must not nest deeper than {depth} levels"
        stack.extend((child, level + 1) for child in children)
    return None
