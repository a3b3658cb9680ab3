"""POST /api/sagas/{id}/resolve over real HTTP: an operator finishes a failed compensation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.served import embedded_server


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with (
        embedded_server(
            tmp_path_factory.mktemp("resolve"),
            imports=["sagakit_examples.slam", "tests.support.workload"],
        ) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        yield client


def settled(http: httpx.Client, saga_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        detail: dict[str, Any] = http.get(f"/api/sagas/{saga_id}").json()
        if detail["status"] in ("completed", "compensated", "failed"):
            return detail
        assert time.monotonic() < deadline, f"{saga_id} still {detail['status']}"
        time.sleep(0.05)


def stuck(http: httpx.Client, tmp_path: Path) -> str:
    """A linear saga whose step c failed and whose compensation of b fails for good."""
    blocker = tmp_path / "vendor-gone"
    blocker.write_text("b's compensation fails while this file exists")
    faults = {"c": ["fail"], "b": [f"undo_fail_while:{blocker}"]}
    started = http.post("/api/sagas", json={"type": "linear", "input": {"faults": faults}})
    assert started.status_code == 202, started.text
    saga_id: str = started.json()["id"]
    assert settled(http, saga_id)["status"] == "failed"
    return saga_id


def test_resolving_goes_on_compensating_and_ends_compensated(
    http: httpx.Client, tmp_path: Path
) -> None:
    saga_id = stuck(http, tmp_path)
    body = {"step": "b", "reason": "refunded by hand in the vendor console", "by": "ana@ops"}
    response = http.post(f"/api/sagas/{saga_id}/resolve", json=body)
    assert response.status_code == 200, response.text
    detail = settled(http, saga_id)
    assert detail["status"] == "compensated"
    events = [(h["event"], h["step"]) for h in detail["history"]]
    assert ("compensation_resolved", "b") in events
    resolved = next(h for h in detail["history"] if h["event"] == "compensation_resolved")
    assert resolved["detail"]["by"] == "ana@ops"
    assert resolved["detail"]["reason"] == body["reason"]
    # a, compensated after b was resolved, by its own compensation
    assert events[-2:] == [("step_compensated", "a"), ("saga_compensated", "c")]


def test_resolving_what_did_not_fail_is_409_and_a_bad_body_422(
    http: httpx.Client, tmp_path: Path
) -> None:
    saga_id = stuck(http, tmp_path)
    url = f"/api/sagas/{saga_id}/resolve"
    wrong = http.post(url, json={"step": "a", "reason": "x", "by": "ops"})
    assert wrong.status_code == 409, wrong.text
    assert "step 'a' has no failed compensation" in wrong.json()["detail"]
    nobody = http.post(url, json={"step": "b", "reason": "x"})
    assert (nobody.status_code, nobody.json()["field"]) == (422, "by")
    malformed = http.post(url, json={"step": "B!", "reason": "x", "by": "ops"})
    assert (malformed.status_code, malformed.json()["field"]) == (422, "step")
    unknown = http.post(
        "/api/sagas/no-such-saga/resolve", json={"step": "b", "reason": "x", "by": "o"}
    )
    assert unknown.status_code == 404
    assert http.get(f"/api/sagas/{saga_id}").json()["status"] == "failed"  # nothing changed
