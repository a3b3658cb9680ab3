"""POST /api/sagas documents the input of every registered saga type, built at app creation.

The documents come from apps that are never started (no lifespan, no database); what the
engine does with a body is tested over HTTP in test_api.py.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from sagakit import Saga, Step, System
from sagakit.api import create_app
from tests.support.api_app import embedded_settings


class Opaque:
    """A type pydantic can validate (arbitrary_types_allowed) but not describe."""


class ShipmentInput(BaseModel):
    """What to ship."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"parcels": 2, "to": "Lyon"}]}
    )
    parcels: int = Field(ge=1, le=10, description="How many parcels.")
    to: str = Field(min_length=2, description="Destination city.")


class UndescribableInput(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    thing: Opaque | None = None


class NoExampleInput(BaseModel):
    code: str = Field(pattern=r"^[0-9]{4}$")


def _saga(name: str, input_model: Any = None) -> Saga:
    step = Step("only", action=f"{name}.do", compensation=f"{name}.undo", queue=name)
    return Saga(name, [step], input_model=input_model, description=f"The {name} saga.")


@pytest.fixture(scope="module")
def spec() -> Iterator[dict[str, Any]]:
    module = types.ModuleType("sagakit_test_start_schema")
    module.sagas = [  # type: ignore[attr-defined]
        _saga("shipment", ShipmentInput),
        _saga("free_form"),
        _saga("opaque", UndescribableInput),
        _saga("coded", NoExampleInput),
    ]
    sys.modules[module.__name__] = module
    try:
        settings = embedded_settings(
            "sqlite://", imports=["sagakit_examples.slam", module.__name__]
        )
        yield create_app(system=System(settings, migrate=False)).openapi()
    finally:
        del sys.modules[module.__name__]


def body_of(spec: dict[str, Any]) -> dict[str, Any]:
    start: dict[str, Any] = spec["paths"]["/api/sagas"]["post"]["requestBody"]
    return start


def component(spec: dict[str, Any], ref: str) -> dict[str, Any]:
    schema: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return schema


def member(spec: dict[str, Any], saga_type: str) -> dict[str, Any]:
    union = component(spec, body_of(spec)["content"]["application/json"]["schema"]["$ref"])
    return component(spec, union["discriminator"]["mapping"][saga_type])


def test_the_body_is_a_union_discriminated_on_type_with_one_member_per_saga_type(
    spec: dict[str, Any],
) -> None:
    union = component(spec, body_of(spec)["content"]["application/json"]["schema"]["$ref"])

    assert union["discriminator"]["propertyName"] == "type"
    mapping = union["discriminator"]["mapping"]
    types_ = {"slam", "shipment", "free_form", "opaque", "coded"}
    assert set(mapping) == types_
    assert sorted(ref["$ref"] for ref in union["oneOf"]) == sorted(mapping.values())
    for saga_type in types_:
        schema = member(spec, saga_type)
        assert schema["properties"]["type"]["const"] == saga_type
        assert schema["additionalProperties"] is False
        assert set(schema["properties"]) == {"type", "input", "version"}


def test_a_member_shows_its_input_model_with_descriptions_and_limits(
    spec: dict[str, Any],
) -> None:
    slam = member(spec, "slam")
    assert slam["required"] == ["type", "input"]
    assert "SLAM" in slam["description"]
    mission = component(spec, slam["properties"]["input"]["$ref"])
    robots = mission["properties"]["robots"]
    assert (robots["minimum"], robots["maximum"]) == (1, 16)
    assert robots["description"] == "Robots to send, one sector each."
    assert mission["properties"]["area"]["pattern"]
    assert {"robots", "area"} <= set(mission["required"])

    shipment = component(spec, member(spec, "shipment")["properties"]["input"]["$ref"])
    assert shipment["properties"]["parcels"]["maximum"] == 10
    assert shipment["properties"]["to"]["description"] == "Destination city."


def test_a_type_without_a_model_takes_any_json_object(spec: dict[str, Any]) -> None:
    for saga_type in ("free_form",):
        schema = member(spec, saga_type)
        assert schema["required"] == ["type"]
        assert schema["properties"]["input"]["type"] == "object"
        assert schema["properties"]["input"].get("additionalProperties", True) is True


def test_a_model_without_a_json_schema_is_shown_as_any_json_object(
    spec: dict[str, Any],
) -> None:
    schema = member(spec, "opaque")
    assert schema["properties"]["input"]["type"] == "object"
    assert "UndescribableInput" not in spec["components"]["schemas"]


def test_every_type_with_an_input_that_validates_has_an_example(spec: dict[str, Any]) -> None:
    examples = body_of(spec)["content"]["application/json"]["examples"]

    assert next(iter(examples)) == "slam"  # the first is what "Try it out" starts with
    assert examples["slam"]["value"] == {"type": "slam", "input": {"robots": 1, "area": "example"}}
    assert examples["shipment"]["value"] == {
        "type": "shipment",
        "input": {"parcels": 2, "to": "Lyon"},  # the model's own example
    }
    assert examples["free_form"]["value"] == {"type": "free_form", "input": {}}
    assert examples["shipment"]["description"] == "The shipment saga."
    assert "coded" not in examples  # no input was found that its pattern accepts
