"""HTTP request and response models (the boundary only; the core stays dataclasses)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from fastapi.openapi.models import Example
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    TypeAdapter,
    create_model,
)

from ..core.definition import Saga
from ..core.state import SagaStatus

logger = logging.getLogger(__name__)

Status = SagaStatus
"""A saga's status word."""


class StartSaga(BaseModel):
    """Start a saga of `type` with `input` (validated against that type's input model)."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1, max_length=64, examples=["slam"])
    input: dict[str, Any] = Field(
        default_factory=dict, examples=[{"robots": 3, "area": "warehouse"}]
    )
    version: int | None = Field(
        default=None, ge=1, description="Pin the definition version (default: the newest)."
    )


def start_body(sagas: Mapping[str, Saga]) -> Any:
    """The body of ``POST /api/sagas``: parsed as `StartSaga`, documented per saga type.

    The engine validates `input` against the type's input model, and names a bad field the
    way the CLI shows it too (``input.robots``), so the body is only parsed here as a type
    and a JSON object. What the OpenAPI document shows is a union discriminated on `type`:
    one member per registered saga type, each with that type's input model (any JSON object
    for a type without one).
    """
    members = [_start_member(name, saga) for name, saga in sagas.items()]
    if not members:
        return StartSaga
    if len(members) == 1:  # one saga type: its own model, with its own description
        return Annotated[
            StartSaga, BeforeValidator(lambda value: value, json_schema_input_type=members[0])
        ]
    documented: Any = Annotated[Union[tuple(members)], Field(discriminator="type")]  # noqa: UP007
    root = create_model(
        "StartSaga",
        __base__=RootModel[documented],
        __doc__="Start a saga: `type` picks the saga, `input` is checked against its model.",
    )
    return Annotated[StartSaga, BeforeValidator(lambda value: value, json_schema_input_type=root)]


def start_examples(sagas: Mapping[str, Saga]) -> dict[str, Example]:
    """One request example per saga type (the docs' "Try it out" starts with the first).

    A type is left out when no input its model accepts can be found.
    """
    examples: dict[str, Example] = {}
    for name, saga in sagas.items():
        model = _documented_model(name, saga.input_model)
        example = {} if model is None else _example_input(model)
        if example is not None:
            examples[name] = Example(
                summary=name,
                description=saga.description,
                value={"type": name, "input": example},
            )
    return examples


def _start_member(name: str, saga: Saga) -> type[BaseModel]:
    """The documented body that starts a saga of type `name`."""
    model = _documented_model(name, saga.input_model)
    if model is None:
        input_type: Any = dict[str, Any]
        input_field: Any = Field(
            default_factory=dict, description=f"Input of `{name}` sagas: any JSON object."
        )
    else:
        input_type = model
        described = f"Input of `{name}` sagas ({model.__name__})."
        if any(field.is_required() for field in model.model_fields.values()):
            input_field = Field(description=described)
        else:
            input_field = Field(default_factory=dict, description=described)
    tag: Any = Literal[name]  # a type made at run time, one per registered saga type
    member: type[BaseModel] = create_model(
        "Start" + "".join(part.capitalize() for part in name.split("_")),
        __config__=ConfigDict(extra="forbid", title=f"start {name}"),
        __doc__=saga.description or f"Start a `{name}` saga.",
        type=(tag, Field(description="The saga type.")),
        input=(input_type, input_field),
        version=(
            int | None,
            Field(
                default=None, ge=1, description="Pin the definition version (default: the newest)."
            ),
        ),
    )
    return member


def _documented_model(name: str, input_model: Any) -> type[BaseModel] | None:
    """`input_model` if the document can show it (a pydantic model with a JSON schema)."""
    if not (isinstance(input_model, type) and issubclass(input_model, BaseModel)):
        return None
    try:
        TypeAdapter(input_model).json_schema()
    except Exception as exc:  # the model still validates; only its schema cannot be shown
        logger.warning(
            "saga input model has no JSON schema",
            extra={"saga_type": name, "error": f"{type(exc).__name__}: {exc}"},
        )
        return None
    return input_model


def _example_input(model: type[BaseModel]) -> dict[str, Any] | None:
    """An input the model accepts, for the docs' "Try it out": its own example, if it has
    one, or else its required fields filled from their schemas; None if neither validates.
    """
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    candidates = [example for example in schema.get("examples", ()) if isinstance(example, dict)]
    candidates.append(
        {
            field: _sample(prop)
            for field, prop in schema.get("properties", {}).items()
            if field in required
        }
    )
    for candidate in candidates:
        try:
            model.model_validate(candidate)
        except Exception:  # not an example after all; the next candidate may be
            continue
        return candidate
    return None


def _sample(prop: dict[str, Any]) -> Any:
    """A plausible value of a JSON schema property (checked by the model afterwards)."""
    if prop.get("examples"):
        return prop["examples"][0]
    for key in ("default", "const"):
        if key in prop:
            return prop[key]
    if prop.get("enum"):
        return prop["enum"][0]
    kind = prop.get("type")
    if kind in ("integer", "number"):
        return prop.get("minimum", prop.get("exclusiveMinimum", -1) + 1)
    if kind == "string":
        return "example".ljust(prop.get("minLength", 0), "x")[: prop.get("maxLength")]
    return {"boolean": False, "array": [], "object": {}}.get(str(kind))


class Started(BaseModel):
    """Where to follow the saga; `created` is false when the idempotency key was seen."""

    id: str
    url: str
    events_url: str
    created: bool
    status: Status


class CancelRequest(BaseModel):
    """Why the saga is cancelled (recorded with it)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="cancelled over HTTP", min_length=1, max_length=500)


class ResolveRequest(BaseModel):
    """A failed compensation an operator did by hand: which step, why, and who."""

    model_config = ConfigDict(extra="forbid")
    step: str = Field(
        min_length=1,
        max_length=80,
        pattern=r"^[a-z][a-z0-9_]*(\[[0-9]+\])?$",
        description="The step instance whose compensation failed (`explore[1]` for a branch).",
        examples=["allocate_robots"],
    )
    reason: str = Field(
        min_length=1,
        max_length=2000,
        description="What was done by hand, and why.",
        examples=["robots released from the fleet console; the service is gone"],
    )
    by: str = Field(min_length=1, max_length=200, description="Who did it.", examples=["ana@ops"])


class SagaSummary(BaseModel):
    """A saga in a listing."""

    id: str
    type: str
    definition_version: int
    definition_deployed: bool | None = Field(
        default=None,
        description="Whether a live worker can advance this saga's definition version "
        "(false: it waits until that version is deployed again; null: no worker says, or "
        "the saga has ended).",
    )
    status: Status
    reason: str | None
    failed_step: str | None
    created_at: str
    updated_at: str
    finished_at: str | None
    duration: float | None
    choreographed: bool = False
    """Folded from a choreography's events by its tracker, not run by the orchestrator."""


class Attempt(BaseModel):
    """One attempt of an action or a compensation."""

    attempt: int
    direction: Literal["action", "compensation"]
    status: str
    task_id: str
    task_name: str
    queue: str
    worker: str | None
    scheduled_at: str | None
    not_before: str | None
    started_at: str | None
    finished_at: str | None
    duration: float | None
    output: Any = None
    error: str | None
    traceback: str | None
    carried_by: str | None = None
    """An eager saga's step: the task id of the Celery delivery that ran it, after the
    step before, instead of a message of its own (Flower shows that task)."""


class StepView(BaseModel):
    """A step instance with its attempts and compensations."""

    name: str
    step: str
    index: int | None
    stage: int
    status: str
    item: Any = None
    output: Any = None
    error: str | None
    attempts: list[Attempt]
    compensations: list[Attempt]


class Transition(BaseModel):
    """One history entry."""

    id: int
    event: str
    step: str | None
    attempt: int | None
    from_: str | None = Field(alias="from")
    to: str | None
    at: str | None
    detail: dict[str, Any] | None


class SagaDetail(SagaSummary):
    """Everything about one saga."""

    input: dict[str, Any]
    idempotency_key: str | None
    deadline_at: str | None
    steps: list[StepView]
    history: list[Transition]


class SagaPage(BaseModel):
    """One page of sagas, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[SagaSummary]
    limit: int
    next_cursor: str | None


class Health(BaseModel):
    """Reachability of the saga log and the broker."""

    status: Literal["ok", "degraded"]
    database: str
    broker: str


class Degraded(Health):
    """A dependency is unreachable: the health, with a problem body that names it."""

    status: Literal["degraded"] = "degraded"
    detail: str
    """What is unreachable and what to check, one sentence per dependency."""
    field: None = None


class Problem(BaseModel):
    """An error: `detail` says what went wrong, `field` which input when there is one."""

    detail: str
    field: str | None = None
