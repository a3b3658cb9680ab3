"""Schemathesis against the embedded app: no 5xx, and every response as the OpenAPI says.

A short, seeded run (positive and negative cases, every operation including the event
stream) through the same kind of embedded app as test_api.py.

The schema is loaded at import (``schema.parametrize()`` needs it then) from an app built
without touching any database; the app under test is built per module on a SQLite file, its
lifespan (the embedded worker) run once by a TestClient, and the generated requests go
through that client. Letting schemathesis drive the app instead would start and stop the
lifespan for every operation (~2 s each), and ``schemathesis.pytest.from_fixture`` does not
run under this pytest (it sets ``node._nodeid``, which pytest 9 no longer has).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sagakit import System
from sagakit.api import create_app
from tests.support.api_app import TestClient, embedded_settings, running_client

SETTLED = ("completed", "compensated", "failed")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# The OpenAPI document depends on the code only, not on the database or a running worker.
SPEC = create_app(
    system=System(embedded_settings("sqlite://", sse_max_seconds=10), migrate=False)
).openapi()
schema = schemathesis.openapi.from_dict(SPEC)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from running_client(tmp_path_factory.mktemp("fuzz"), sse_max_seconds=10)


def send(client: TestClient, case: schemathesis.Case) -> Any:
    """Send a generated case through the test client (requests-style kwargs -> httpx)."""
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
    data = kwargs.pop("data", None)
    if isinstance(data, bytes | str):
        kwargs["content"] = data
    elif data is not None:
        kwargs["data"] = data
    if not kwargs.get("cookies"):
        kwargs.pop("cookies", None)
    return client.request(**kwargs, follow_redirects=False)


def settle(client: TestClient, saga_id: str, timeout: float = 60.0) -> None:
    """Wait until a saga the run started has settled (bounded; fails at the deadline)."""
    deadline = time.monotonic() + timeout
    while client.get(f"/api/sagas/{saga_id}").json()["status"] not in SETTLED:
        if time.monotonic() > deadline:
            pytest.fail(f"saga {saga_id} did not settle within {timeout}s")
        time.sleep(0.05)


def test_the_fuzzed_schema_is_the_served_one(client: TestClient) -> None:
    assert client.get("/openapi.json").json() == SPEC


@schema.parametrize()
@settings(
    max_examples=15,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_api_conforms_to_its_schema(client: TestClient, case: schemathesis.Case) -> None:
    response = send(client, case)
    case.validate_response(response, checks=CHECKS)
    if response.status_code == 202:
        # Let the saga finish before Hypothesis draws again: the worker threads then never
        # format a traceback (CPython 3.11 parses source with `ast` for its carets) while
        # Hypothesis parses strategy source with `ast` too. CPython 3.11.7 keeps the AST
        # constructor's recursion depth in interpreter-wide state, and the two racing fail
        # with "SystemError: AST constructor recursion depth mismatch". It also keeps the
        # fleet free, so every started mission runs the same way on every run.
        settle(client, response.json()["id"])
