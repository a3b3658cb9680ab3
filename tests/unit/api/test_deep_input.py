"""Deeply nested JSON bodies get a 4xx naming the problem, at any depth, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sagakit.core.inputs import MAX_DEPTH
from tests.support.served import embedded_server

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with (
        # The workload's sagas take any JSON object as input (SLAM's model has no room for
        # nesting).
        embedded_server(
            tmp_path_factory.mktemp("deep"),
            imports=["sagakit_examples.slam", "tests.support.workload"],
        ) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        yield client


def nested(levels: int) -> str:
    """`levels` lists, one inside the other."""
    return "[" * levels + "]" * levels


def start_body(levels: int) -> str:
    return '{"type": "linear", "input": {"deep": ' + nested(levels) + "}}"


def test_input_within_the_limit_is_accepted(http: httpx.Client) -> None:
    # The input object is the first level, its "deep" list the second.
    response = http.post("/api/sagas", content=start_body(MAX_DEPTH - 1), headers=JSON)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("levels", [MAX_DEPTH, 500, 900])
def test_input_past_the_limit_is_422_naming_the_limit(http: httpx.Client, levels: int) -> None:
    response = http.post("/api/sagas", content=start_body(levels), headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json() == {
        "detail": f"input: must not nest deeper than {MAX_DEPTH} levels",
        "field": "input",
    }


@pytest.mark.parametrize("levels", [2000, 10_000, 100_000])
@pytest.mark.parametrize("path", ["/api/sagas", "/api/sagas/some-saga/cancel"])
def test_json_too_deep_to_read_is_400_naming_the_problem(
    http: httpx.Client, path: str, levels: int
) -> None:
    body = start_body(levels) if path == "/api/sagas" else '{"reason": ' + nested(levels) + "}"
    response = http.post(path, content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert response.json() == {
        "detail": f"body: JSON nested too deeply to read (input may nest up to {MAX_DEPTH} levels)",
        "field": "body",
    }


def test_a_body_that_is_not_utf8_says_so(http: httpx.Client) -> None:
    response = http.post("/api/sagas", content=b"\xff\xfe{", headers=JSON)
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": "body: not UTF-8", "field": "body"}


def test_other_http_errors_keep_their_status(http: httpx.Client) -> None:
    assert http.get("/api/no-such-route").status_code == 404
    assert http.delete("/api/sagas").status_code == 405


def test_nothing_was_started_by_the_refused_bodies(http: httpx.Client) -> None:
    listed = http.get("/api/sagas").json()["items"]
    assert len(listed) == 1  # the one within the limit
