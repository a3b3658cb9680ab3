"""A saga's input fields as `sagakit run TYPE --help` lists them, from any input model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from sagakit.cli.fields import input_fields, json_fields, schema_of


class Line(BaseModel):
    sku: str
    quantity: int = 1


class Order(BaseModel):
    """An order to place."""

    customer: str = Field(min_length=3, max_length=20, pattern=r"^c-\d+$", description="Who.")
    total: float = Field(gt=0, le=1000, description="Amount in euros.")
    rush: bool = False
    channel: Literal["web", "shop"] = "web"
    note: str | None = None
    lines: list[Line] = Field(default_factory=list, max_length=5)
    shipping: Line | None = None


def test_each_field_has_its_option_type_default_limits_and_description() -> None:
    found = {f.name: f for f in input_fields(schema_of(Order))}
    assert list(found) == [
        "customer",
        "total",
        "rush",
        "channel",
        "note",
        "lines",
        "shipping",
    ]
    customer = found["customer"]
    assert (customer.option, customer.type, customer.default) == (
        "--customer",
        "string",
        "required",
    )
    assert customer.limits == "3 to 20 characters; matching ^c-\\d+$"
    assert customer.description == "Who."
    total = found["total"]
    assert (total.type, total.default, total.limits) == (
        "number",
        "required",
        "at most 1000; more than 0",
    )
    assert (found["rush"].type, found["rush"].default) == ("boolean", "false")
    assert found["channel"].limits == "one of web, shop"
    assert found["channel"].default == '"web"'
    assert (found["note"].type, found["note"].default) == ("string", "null")
    assert found["lines"].type == "array (JSON)"
    assert found["lines"].limits == "0 to 5 items"
    assert found["shipping"].type == "object (JSON)"


def test_objects_and_lists_are_the_fields_given_as_json() -> None:
    assert json_fields(schema_of(Order)) == {"lines", "shipping"}
