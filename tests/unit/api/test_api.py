"""The HTTP API over HTTP, on the embedded default (SQLite file, in-process Celery worker).

Each class runs one app (its lifespan starts the embedded worker); the apps never overlap,
since they would share the in-process broker and the SLAM services' environment.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api_app import TestClient, running_client

SETTLED = ("completed", "compensated", "failed")
MISSION = {"robots": 2, "area": "warehouse"}
SLOW_MISSION = {"robots": 1, "area": "depot", "faults": {"slow": {"plan_routes": 1.5}}}
SNAKE_CASE = re.compile(r"^[a-z]+(_[a-z]+)*$")
MISSION_STEPS = [
    "allocate_robots",
    "plan_routes",
    "explore[0]",
    "explore[1]",
    "integrate_maps",
    "release_robots",
]


def start(client: TestClient, saga_input: dict[str, Any], **headers: str) -> str:
    response = client.post(
        "/api/sagas", json={"type": "slam", "input": saga_input}, headers=headers
    )
    assert response.status_code == 202, response.text
    saga_id: str = response.json()["id"]
    return saga_id


def wait_settled(client: TestClient, saga_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll GET /api/sagas/{id} until the saga settles; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/api/sagas/{saga_id}")
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        if detail["status"] in SETTLED:
            return detail
        if time.monotonic() > deadline:
            pytest.fail(f"saga {saga_id} still {detail['status']} after {timeout}s")
        time.sleep(0.05)


def read_events(
    client: TestClient,
    saga_id: str,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    max_lines: int = 2000,
) -> list[tuple[str, dict[str, Any], float]]:
    """The SSE stream of a saga as (event, data, arrival time), up to and including `end`.

    Bounded twice: by `max_lines` here and by the app's ``sse_max_seconds`` (30 s).
    """
    events: list[tuple[str, dict[str, Any], float]] = []
    with client.stream("GET", f"/api/sagas/{saga_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for count, line in enumerate(response.iter_lines()):
            assert count < max_lines, "the event stream did not end"
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                assert name is not None, "data line without an event line"
                events.append((name, json.loads(line.removeprefix("data: ")), time.monotonic()))
                if on_event is not None:
                    on_event(name, events[-1][1])
                if name == "end":
                    break
                name = None
    assert events, "no events"
    assert events[-1][0] == "end", f"the stream stopped before its end event: {events[-1]}"
    return events


def listing(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get("/api/sagas", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["items"]]


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class TestOpenApi:
    """No token set: every route is open."""

    @pytest.fixture(scope="class")
    def client(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
        yield from running_client(tmp_path_factory.mktemp("api"))

    def test_a_start_may_pin_a_deployed_version(self, client: TestClient) -> None:
        pinned = client.post("/api/sagas", json={"type": "slam", "input": MISSION, "version": 1})
        assert pinned.status_code == 202, pinned.text
        detail = wait_settled(client, pinned.json()["id"])
        assert detail["definition_version"] == 1
        assert detail["definition_deployed"] is None  # ended: nothing left to advance
        missing = client.post("/api/sagas", json={"type": "slam", "input": MISSION, "version": 7})
        assert missing.status_code == 409
        assert missing.json()["field"] == "version"
        assert "'slam' version 7 is not deployed here (deployed: v1)" in missing.json()["detail"]

    def test_start_answers_202_with_links_and_the_saga_completes(self, client: TestClient) -> None:
        response = client.post("/api/sagas", json={"type": "slam", "input": MISSION})

        assert response.status_code == 202
        started = response.json()
        saga_id = started["id"]
        assert started["created"] is True
        assert started["url"] == f"/api/sagas/{saga_id}"
        assert started["events_url"] == f"/api/sagas/{saga_id}/events"
        assert started["status"] in ("pending", "running", "completed")
        assert response.headers["location"] == started["url"]

        detail = wait_settled(client, saga_id)
        assert detail["status"] == "completed"
        assert detail["type"] == "slam"
        assert detail["input"]["robots"] == 2
        assert detail["input"]["seed"] == 0  # defaults filled in by the input model
        assert detail["finished_at"] is not None
        assert detail["duration"] > 0
        assert [step["name"] for step in detail["steps"]] == MISSION_STEPS
        for step in detail["steps"]:
            assert step["status"] == "succeeded"
            assert step["compensations"] == []
            assert step["attempts"], step["name"]
            last = step["attempts"][-1]
            assert last["direction"] == "action"
            assert last["status"] == "succeeded"
            assert last["task_id"] and last["task_name"] and last["queue"]
            assert last["worker"]
            assert last["started_at"] and last["finished_at"]
        events = [entry["event"] for entry in detail["history"]]
        assert all(SNAKE_CASE.match(event) for event in events), events
        assert events[0] == "saga_started"
        assert events[-1] == "saga_completed"
        assert events.count("step_completed") == len(MISSION_STEPS)
        history_ids = [entry["id"] for entry in detail["history"]]
        assert history_ids == sorted(history_ids)
        assert detail["history"][-1]["to"] == "completed"

    def test_the_same_idempotency_key_returns_the_same_saga(self, client: TestClient) -> None:
        body = {"type": "slam", "input": {"robots": 1, "area": "annex"}}
        first = client.post("/api/sagas", json=body, headers={"Idempotency-Key": "mission-42"})
        again = client.post("/api/sagas", json=body, headers={"Idempotency-Key": "mission-42"})
        other = client.post("/api/sagas", json=body, headers={"Idempotency-Key": "mission-43"})

        assert (first.status_code, again.status_code, other.status_code) == (202, 202, 202)
        assert first.json()["created"] is True
        assert again.json()["created"] is False
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["location"] == first.headers["location"]
        assert other.json()["id"] != first.json()["id"]
        assert other.json()["created"] is True
        for saga_id in (first.json()["id"], other.json()["id"]):
            detail = wait_settled(client, saga_id)
            assert detail["status"] == "completed"
        assert wait_settled(client, first.json()["id"])["idempotency_key"] == "mission-42"

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            pytest.param({"type": "slam", "input": {"robots": 0, "area": "a"}}, "input.robots"),
            pytest.param(
                {"type": "slam", "input": {"robots": "many", "area": "a"}},
                "input.robots",
                id="robots-not-an-integer",
            ),
            pytest.param(
                {"type": "slam", "input": {"robots": 1, "area": "a", "faults": {"fail_at": "x"}}},
                "input.faults.fail_at",
                id="unknown-fail_at",
            ),
            pytest.param(
                {"type": "slam", "input": {"robots": 1, "area": "a", "fail_at": "nowhere"}},
                "input.faults.fail_at",
                id="unknown-top-level-fail_at",
            ),
            pytest.param({"type": "slam", "input": {"robots": 1}}, "input.area", id="no-area"),
            pytest.param(
                {"type": "slam", "input": {"robots": 1, "area": "a", "colour": "red"}},
                "input.colour",
                id="extra-input-field",
            ),
            pytest.param(
                {"type": "slam", "input": {"robots": 16, "area": "a", "width": 40}},
                "input",
                id="too-many-robots-for-the-width",
            ),
            pytest.param(
                {"type": "slam", "input": {"robots": 1, "area": "a"}, "priority": 1},
                "priority",
                id="extra-field",
            ),
            pytest.param({"type": "moonwalk", "input": MISSION}, "type", id="unknown-type"),
            pytest.param({"input": MISSION}, "type", id="no-type"),
            pytest.param({"type": "slam", "input": [1, 2]}, "input", id="input-a-list"),
            pytest.param({"type": "slam", "input": "warehouse"}, "input", id="input-a-string"),
        ],
    )
    def test_invalid_input_is_422_naming_the_field(
        self, client: TestClient, body: dict[str, Any], field: str
    ) -> None:
        before = listing(client, limit=500)["items"]

        response = client.post("/api/sagas", json=body)

        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["field"] == field
        assert isinstance(problem["detail"], str)
        assert problem["detail"]
        assert listing(client, limit=500)["items"] == before  # nothing was started

    def test_an_unknown_type_is_422_naming_the_known_ones(self, client: TestClient) -> None:
        response = client.post("/api/sagas", json={"type": "moonwalk", "input": MISSION})

        assert response.status_code == 422
        problem = response.json()
        assert problem["field"] == "type"
        assert "moonwalk" in problem["detail"]
        assert "(known: slam)" in problem["detail"]  # benchmark sagas only while benching

    def test_every_documented_example_starts_a_saga(self, client: TestClient) -> None:
        start_op = client.get("/openapi.json").json()["paths"]["/api/sagas"]["post"]
        examples = start_op["requestBody"]["content"]["application/json"]["examples"]
        assert set(examples) == {"slam"}

        for name, example in examples.items():
            response = client.post("/api/sagas", json=example["value"])

            assert response.status_code == 202, (name, response.text)
            assert wait_settled(client, response.json()["id"])["status"] == "completed", name

    @pytest.mark.parametrize("key", ["", "k" * 201])
    def test_an_idempotency_key_of_the_wrong_length_is_422(
        self, client: TestClient, key: str
    ) -> None:
        body = {"type": "slam", "input": MISSION}
        response = client.post("/api/sagas", json=body, headers={"Idempotency-Key": key})

        assert response.status_code == 422, response.text
        assert response.json()["field"] == "header.Idempotency-Key"

    def test_malformed_json_is_422(self, client: TestClient) -> None:
        response = client.post(
            "/api/sagas", content=b'{"type": ', headers={"content-type": "application/json"}
        )

        assert response.status_code == 422
        assert response.json()["detail"]
        assert response.json()["field"]

    def test_a_body_that_is_not_utf8_is_400(self, client: TestClient) -> None:
        for path in ("/api/sagas", "/api/sagas/some-saga/cancel"):
            response = client.post(
                path, content=b"\xff\xfe{", headers={"content-type": "application/json"}
            )

            assert response.status_code == 400, response.text
            assert response.json()["detail"]

    def test_an_unknown_saga_is_404(self, client: TestClient) -> None:
        for method, path in [
            ("GET", "/api/sagas/no-such-saga"),
            ("GET", "/api/sagas/no-such-saga/events"),
            ("POST", "/api/sagas/no-such-saga/cancel"),
            ("POST", "/api/sagas/no-such-saga/retry"),
        ]:
            response = client.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert "no-such-saga" in response.json()["detail"]

    @pytest.mark.parametrize("saga_id", ["bad!id", "x" * 65, "semi;colon"])
    def test_a_malformed_saga_id_is_422(self, client: TestClient, saga_id: str) -> None:
        for method, path in [
            ("GET", f"/api/sagas/{saga_id}"),
            ("GET", f"/api/sagas/{saga_id}/events"),
            ("POST", f"/api/sagas/{saga_id}/cancel"),
            ("POST", f"/api/sagas/{saga_id}/retry"),
        ]:
            response = client.request(method, path)
            assert response.status_code == 422, (method, path, response.text)
            assert response.json()["field"] == "path.saga_id"

    def test_cancel_and_retry_of_a_completed_saga_conflict(self, client: TestClient) -> None:
        saga_id = start(client, {"robots": 1, "area": "yard"})
        assert wait_settled(client, saga_id)["status"] == "completed"

        cancel = client.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "too late"})
        retry = client.post(f"/api/sagas/{saga_id}/retry")

        assert cancel.status_code == 409, cancel.text
        assert retry.status_code == 409, retry.text
        assert "cancel" in cancel.json()["detail"]
        assert "retry" in retry.json()["detail"]
        assert wait_settled(client, saga_id)["status"] == "completed"

    def test_a_failing_mission_is_compensated_in_reverse(self, client: TestClient) -> None:
        saga_id = start(client, {**MISSION, "faults": {"fail_at": "integrate_maps"}})

        detail = wait_settled(client, saga_id)

        assert detail["status"] == "compensated"
        assert detail["failed_step"] == "integrate_maps"
        assert detail["reason"]
        steps = {step["name"]: step for step in detail["steps"]}
        for name in ("allocate_robots", "plan_routes", "explore[0]", "explore[1]"):
            assert steps[name]["status"] == "compensated", steps[name]
            assert steps[name]["compensations"], name
            last = steps[name]["compensations"][-1]
            assert last["direction"] == "compensation"
            assert last["status"] == "succeeded"
        assert steps["integrate_maps"]["status"] == "failed"
        assert steps["integrate_maps"]["compensations"] == []
        assert steps["integrate_maps"]["attempts"][-1]["error"]
        assert not steps.get("release_robots", {}).get("attempts")  # never ran
        compensated = [h["step"] for h in detail["history"] if h["event"] == "step_compensated"]
        assert compensated[-2:] == ["plan_routes", "allocate_robots"]
        assert set(compensated[:2]) == {"explore[0]", "explore[1]"}
        assert detail["history"][-1]["event"] == "saga_compensated"
        # Compensated is final: there is nothing to retry or cancel.
        assert client.post(f"/api/sagas/{saga_id}/retry").status_code == 409
        assert client.post(f"/api/sagas/{saga_id}/cancel").status_code == 409

    def test_list_filters_and_pages_newest_first(self, client: TestClient) -> None:
        since = datetime.now(UTC)
        first = start(client, {"robots": 1, "area": "north"})
        failing = start(client, {"robots": 1, "area": "south", "fail_at": "plan_routes"})
        last = start(client, {"robots": 1, "area": "east"})
        for saga_id in (first, failing, last):
            wait_settled(client, saga_id)
        after = since.isoformat()

        page = listing(client, type="slam", created_after=after)
        assert ids(page) == [last, failing, first]
        assert page["next_cursor"] is None
        item = page["items"][0]
        assert item["type"] == "slam"
        assert item["status"] == "completed"
        assert item["created_at"] and item["finished_at"]
        created = [item["created_at"] for item in page["items"]]
        assert created == sorted(created, reverse=True)

        one = listing(client, type="slam", created_after=after, limit=2)
        assert ids(one) == [last, failing]
        assert one["limit"] == 2 and one["next_cursor"]
        two = listing(client, type="slam", created_after=after, limit=2, cursor=one["next_cursor"])
        assert ids(two) == [first]
        assert two["next_cursor"] is None
        assert ids(listing(client, search=failing)) == [failing]

        assert ids(listing(client, status="compensated", created_after=after)) == [failing]
        assert ids(listing(client, status="completed", created_after=after)) == [last, first]
        assert ids(listing(client, status="failed", created_after=after)) == []
        assert ids(listing(client, type="moonwalk")) == []
        future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        assert ids(listing(client, created_after=future)) == []
        before = set(ids(listing(client, created_before=after, limit=500)))
        assert before.isdisjoint({first, failing, last})
        everything = ids(listing(client, limit=500))
        assert everything[:3] == [last, failing, first]

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"status": "lost"}, "query.status"),
            ({"limit": 0}, "query.limit"),
            ({"limit": 501}, "query.limit"),
            ({"cursor": "bm9wZQ"}, "cursor"),
            ({"created_after": "yesterday"}, "query.created_after"),
            # Valid ISO 8601, but with no UTC equivalent (was a 500).
            ({"created_after": "0001-01-01T00:00:00+01:00"}, "query.created_after"),
            ({"created_before": "9999-12-31T23:59:59-01:00"}, "query.created_before"),
        ],
    )
    def test_list_rejects_bad_filters(
        self, client: TestClient, params: dict[str, Any], field: str
    ) -> None:
        response = client.get("/api/sagas", params=params)

        assert response.status_code == 422
        assert response.json()["field"] == field

    def test_metrics_count_what_was_started(self, client: TestClient) -> None:
        wait_settled(client, start(client, {"robots": 1, "area": "west"}))
        sagas = listing(client, type="slam", limit=500)["items"]
        assert sagas and all(s["status"] in SETTLED for s in sagas)

        response = client.get("/metrics")

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert 'sagakit_sagas_started_total{saga_type="slam"}' in text
        assert "sagakit_saga_duration_seconds_bucket" in text
        samples = metric_samples(text)
        slam = frozenset({("saga_type", "slam")})
        assert samples[("sagakit_sagas_started_total", slam)] == len(sagas)
        for outcome in ("completed", "compensated"):
            count = sum(1 for s in sagas if s["status"] == outcome)
            labels = frozenset({("saga_type", "slam"), ("outcome", outcome)})
            assert samples[("sagakit_sagas_finished_total", labels)] == count
            assert samples[("sagakit_saga_duration_seconds_count", labels)] == count
            inf = frozenset({*labels, ("le", "+Inf")})
            assert samples[("sagakit_saga_duration_seconds_bucket", inf)] == count

    def test_robots_lists_the_fleet(self, client: TestClient) -> None:
        response = client.get("/api/robots")

        assert response.status_code == 200
        fleet = response.json()
        assert [robot["id"] for robot in fleet] == list(range(1, 9))
        assert [robot["name"] for robot in fleet] == [f"scout-{n:02d}" for n in range(1, 9)]
        assert all(robot["held_by"] is None for robot in fleet)  # every mission gave them back
        assert {robot["state"] for robot in fleet} == {"free"}

    def test_healthz(self, client: TestClient) -> None:
        response = client.get("/healthz")

        assert response.status_code == 200
        health = response.json()
        assert health["status"] == "ok"
        assert health["database"] == "ok"
        assert health["broker"].startswith("ok")

    def test_docs_assets_ship_with_the_package(self, client: TestClient) -> None:
        # What the page shows is tested in a browser (tests/browser/test_docs_page.py).
        docs = client.get("/docs")
        assert docs.status_code == 200
        assert docs.headers["content-type"].startswith("text/html")

        bundle = client.get("/static/swagger/swagger-ui-bundle.js")
        assert bundle.status_code == 200
        assert "javascript" in bundle.headers["content-type"]
        assert "SwaggerUIBundle" in bundle.text
        css = client.get("/static/swagger/swagger-ui.css")
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")
        version = client.get("/static/swagger/VERSION").text.strip()
        assert version.split(".")[0] == "5"  # Swagger UI 4 cannot read OpenAPI 3.1
        assert "Apache License" in client.get("/static/swagger/LICENSE").text

        root = client.get(
            "/", follow_redirects=False
        )  # the dashboard (tests/unit/api/test_dashboard_http.py)
        assert root.status_code in (200, 303)

    def test_openapi_describes_the_api(self, client: TestClient) -> None:
        response = client.get("/openapi.json")

        assert response.status_code == 200
        spec = response.json()
        assert spec["openapi"].startswith("3.")
        paths = spec["paths"]
        for path in (
            "/api/sagas",
            "/api/sagas/{saga_id}",
            "/api/sagas/{saga_id}/cancel",
            "/api/sagas/{saga_id}/retry",
            "/api/sagas/{saga_id}/events",
            "/healthz",
            "/metrics",
            "/api/robots",
        ):
            assert path in paths, path
        assert set(paths["/api/sagas"]) == {"get", "post"}
        start_op = paths["/api/sagas"]["post"]
        assert set(start_op["responses"]) == {"202", "400", "409", "422"}
        # One saga type registered: the body is documented as that type's own start body.
        assert start_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/StartSlam"
        )
        assert {"Problem", "SagaDetail", "SagaPage", "Started"} <= set(
            spec["components"]["schemas"]
        )
        assert "/docs" not in paths
        # No token is set: nothing asks for one.
        assert "securitySchemes" not in spec["components"]
        assert all("security" not in op for ops in paths.values() for op in ops.values())
        assert all("401" not in op["responses"] for ops in paths.values() for op in ops.values())

    def test_events_of_a_finished_saga_replay_the_history_then_end(
        self, client: TestClient
    ) -> None:
        saga_id = start(client, {"robots": 1, "area": "cellar"})
        detail = wait_settled(client, saga_id)

        events = read_events(client, saga_id)

        names = [name for name, _, _ in events]
        assert names[-1] == "end"
        assert set(names[:-1]) == {"transition"}
        transitions = [data for name, data, _ in events if name == "transition"]
        assert [t["event"] for t in transitions] == [h["event"] for h in detail["history"]]
        assert [t["step"] for t in transitions] == [h["step"] for h in detail["history"]]
        assert events[-1][1] == {"id": saga_id, "status": "completed"}

    def test_events_of_a_running_saga_arrive_as_they_happen(self, client: TestClient) -> None:
        saga_id = start(client, SLOW_MISSION)
        status_at_first_event: list[str] = []

        def on_event(name: str, data: dict[str, Any]) -> None:
            if name == "transition" and not status_at_first_event:
                status_at_first_event.append(client.get(f"/api/sagas/{saga_id}").json()["status"])

        events = read_events(client, saga_id, on_event)

        assert status_at_first_event[0] not in SETTLED  # the stream was live, not a replay
        assert events[-1][1] == {"id": saga_id, "status": "completed"}
        arrived = {(data["event"], data["step"]): at for name, data, at in events if name != "end"}
        started_at = arrived[("saga_started", None)]
        planned_at = arrived[("step_completed", "plan_routes")]
        assert planned_at - started_at > 1.0  # plan_routes sleeps 1.5 s between the two
        assert events[-1][2] >= arrived[("saga_completed", None)]
        detail = wait_settled(client, saga_id)
        assert [data["event"] for name, data, _ in events if name == "transition"] == [
            h["event"] for h in detail["history"]
        ]
