"""A saga type's input fields, told from its input model's JSON Schema (``run TYPE --help``).

Works for any pydantic model a saga declares as its ``input_model``: each field becomes a
``--field-name`` option with its type, whether it is required or its default, its limits
(range, length, pattern, choices) and its description.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any

JSON_TYPES = ("object", "array")
"""Field types whose command-line value is read as JSON."""


@dataclass(frozen=True)
class InputField:
    """One field of a saga's input, as a command-line option."""

    name: str
    type: str
    default: str
    limits: str
    description: str

    @property
    def option(self) -> str:
        """The option that sets it: ``robot_wait`` is ``--robot-wait``."""
        return "--" + self.name.replace("_", "-")


def schema_of(model: Any) -> dict[str, Any]:
    """The model's JSON Schema (validation mode: what the input may be)."""
    schema: dict[str, Any] = model.model_json_schema()
    return schema


def input_fields(schema: dict[str, Any]) -> list[InputField]:
    """The fields of an input model's JSON Schema, in declaration order."""
    definitions = schema.get("$defs", {})
    required = set(schema.get("required", ()))
    found = []
    for name, raw in schema.get("properties", {}).items():
        prop = _resolved(raw, definitions)
        if name in required:
            default = "required"
        elif "default" in raw:
            default = json.dumps(raw["default"])
        else:
            default = "optional"
        found.append(
            InputField(
                name=name,
                type=_type(prop, definitions),
                default=default,
                limits=_limits(prop),
                description=_text(raw.get("description") or prop.get("description") or ""),
            )
        )
    return found


def json_fields(schema: dict[str, Any]) -> set[str]:
    """Names of the fields whose value is an object or a list (given as JSON)."""
    definitions = schema.get("$defs", {})
    return {
        name
        for name, raw in schema.get("properties", {}).items()
        if set(_types(_resolved(raw, definitions), definitions)) & set(JSON_TYPES)
    }


def model_text(schema: dict[str, Any]) -> str:
    """The model's docstring, as plain text."""
    return _text(schema.get("description") or "")


def _text(value: str) -> str:
    return inspect.cleandoc(value).replace("``", "`")


def _resolved(prop: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return {**definitions.get(ref.rsplit("/", 1)[-1], {}), **prop}
    return prop


def _types(prop: dict[str, Any], definitions: dict[str, Any]) -> list[str]:
    if "anyOf" in prop:
        types: list[str] = []
        for option in prop["anyOf"]:
            types.extend(_types(_resolved(option, definitions), definitions))
        return types
    kind = prop.get("type")
    if isinstance(kind, list):
        return [str(k) for k in kind]
    if kind is None and "enum" in prop:
        return sorted({type(v).__name__.replace("str", "string") for v in prop["enum"]})
    return [str(kind)] if kind else ["any"]


def _type(prop: dict[str, Any], definitions: dict[str, Any]) -> str:
    types = [t for t in _types(prop, definitions) if t != "null"] or ["null"]
    named = [f"{t} (JSON)" if t in JSON_TYPES else t for t in dict.fromkeys(types)]
    return " or ".join(named)


def _limits(prop: dict[str, Any]) -> str:
    limits = []
    low, high = prop.get("minimum"), prop.get("maximum")
    if low is not None and high is not None:
        limits.append(f"{low} to {high}")
    elif low is not None:
        limits.append(f"at least {low}")
    elif high is not None:
        limits.append(f"at most {high}")
    if prop.get("exclusiveMinimum") is not None:
        limits.append(f"more than {prop['exclusiveMinimum']}")
    if prop.get("exclusiveMaximum") is not None:
        limits.append(f"less than {prop['exclusiveMaximum']}")
    shortest, longest = prop.get("minLength"), prop.get("maxLength")
    if shortest is not None or longest is not None:
        if longest is None:
            limits.append(f"at least {shortest} characters")
        else:
            limits.append(f"{shortest or 0} to {longest} characters")
    if prop.get("pattern"):
        limits.append(f"matching {prop['pattern']}")
    if prop.get("enum"):
        limits.append("one of " + ", ".join(str(v) for v in prop["enum"]))
    if prop.get("minItems") is not None or prop.get("maxItems") is not None:
        limits.append(f"{prop.get('minItems', 0)} to {prop.get('maxItems', 'any')} items")
    return "; ".join(limits)


def render(saga_type: str, model: Any) -> Any:
    """A rich renderable: the model's description and a table of its fields."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if model is None:
        return Text(
            f"{saga_type} declares no input model: --input takes any JSON object, and each "
            "--field value is read as JSON where it parses (else as text)."
        )
    schema = schema_of(model)
    table = Table(title=f"input fields of {saga_type}", title_justify="left", expand=False)
    for column in ("option", "type", "default", "limits", "description"):
        table.add_column(column, overflow="fold")
    for item in input_fields(schema):
        table.add_row(item.option, item.type, item.default, item.limits, item.description)
    parts: list[Any] = []
    about = model_text(schema)
    if about:
        parts.append(Text(about))
    parts.append(table)
    parts.append(
        Text(
            "Each field is also a key of --input's JSON object; values of object and list "
            "fields are read as JSON."
        )
    )
    return Group(*parts)
