"""Bearer tokens: every /api route needs one when SAGAKIT_API_TOKEN is set; the read token
allows reads only; /healthz and /metrics are open unless SAGAKIT_API_PROTECT_SYSTEM is set.

Each route class is tried with no token, wrong tokens, the read token and the API token.
"""

from __future__ import annotations

import json
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from sagakit import Settings, System
from sagakit.api import create_app
from sagakit_examples.slam import databases
from tests.support.api_app import TestClient, embedded_settings, running_client

WRITE = {"Authorization": "Bearer s3cret"}
READ = {"Authorization": "Bearer r3ad-only"}
TOKENS = {"api_token": "s3cret", "api_read_token": "r3ad-only"}
MISSION = {"type": "slam", "input": {"robots": 1, "area": "vault"}}
SLOW_MISSION = {"robots": 1, "area": "depot", "faults": {"slow": {"plan_routes": 1.5}}}
WRONG = [
    pytest.param({}, id="no-header"),
    pytest.param({"Authorization": "Bearer wrong"}, id="wrong-token"),
    pytest.param({"Authorization": "Basic s3cret"}, id="wrong-scheme"),
    pytest.param({"Authorization": "Bearer"}, id="no-token"),
    pytest.param({"Authorization": "s3cret"}, id="bare-token"),
    pytest.param({"Authorization": "Bearer s3cret-and-more"}, id="longer-token"),
    pytest.param({"Authorization": b"Bearer s3cr\xe9t"}, id="non-ascii-token"),
]
WRITES = [
    ("POST", "/api/sagas", MISSION),
    ("POST", "/api/sagas/{id}/cancel", {"reason": "not allowed"}),
    ("POST", "/api/sagas/{id}/retry", None),
]
READS = [
    "/api/sagas",
    "/api/sagas/{id}",
    "/api/sagas/{id}/events",
    "/api/robots",
]


def start(client: TestClient, saga_input: dict[str, Any]) -> str:
    response = client.post("/api/sagas", json={"type": "slam", "input": saga_input}, headers=WRITE)
    assert response.status_code == 202, response.text
    saga_id: str = response.json()["id"]
    return saga_id


def wait_settled(
    client: TestClient, saga_id: str, headers: dict[str, str], timeout: float = 30.0
) -> dict[str, Any]:
    """Poll GET /api/sagas/{id} until the saga settles; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/api/sagas/{saga_id}", headers=headers)
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        if detail["status"] in ("completed", "compensated", "failed"):
            return detail
        if time.monotonic() > deadline:
            pytest.fail(f"saga {saga_id} still {detail['status']} after {timeout}s")
        time.sleep(0.05)


def listing(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = client.get("/api/sagas", params={"limit": 500}, headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def last_event(client: TestClient, saga_id: str, headers: dict[str, str]) -> dict[str, Any]:
    """The `end` event of a settled saga's stream (bounded by a line count)."""
    with client.stream("GET", f"/api/sagas/{saga_id}/events", headers=headers) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _, line in zip(range(2000), lines, strict=False):
            if line == "event: end":
                data: dict[str, Any] = json.loads(next(lines).removeprefix("data: "))
                return data
    pytest.fail("the event stream did not end")


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    problem: dict[str, Any] = response.json()
    assert set(problem) == {"detail", "field"}
    assert problem["field"] == "header.Authorization"
    assert "token" in problem["detail"]
    return problem


class TestTokens:
    @pytest.fixture(scope="class")
    def client(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
        yield from running_client(tmp_path_factory.mktemp("api-auth"), **TOKENS)
        databases.reset()

    @pytest.fixture(scope="class")
    def saga_id(self, client: TestClient) -> str:
        """A settled saga, for the routes that read or change one."""
        saga_id = start(client, MISSION["input"])
        assert wait_settled(client, saga_id, headers=WRITE)["status"] == "completed"
        return saga_id

    @pytest.mark.parametrize("headers", WRONG)
    def test_every_api_route_without_a_valid_token_is_401(
        self, client: TestClient, saga_id: str, headers: dict[str, Any]
    ) -> None:
        before = listing(client, WRITE)
        for method, path, body in [*WRITES, *(("GET", path, None) for path in READS)]:
            url = path.format(id=saga_id)
            response = client.request(method, url, json=body, headers=headers)

            problem = assert_problem(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "bearer token" in problem["detail"], (method, url)
        assert listing(client, WRITE) == before  # nothing was started

    def test_a_401_names_the_read_token_only_where_it_would_do(
        self, client: TestClient, saga_id: str
    ) -> None:
        read = assert_problem(client.get(f"/api/sagas/{saga_id}"), 401)["detail"]
        write = assert_problem(client.post(f"/api/sagas/{saga_id}/retry"), 401)["detail"]

        assert "$SAGAKIT_API_READ_TOKEN" in read
        assert "$SAGAKIT_API_READ_TOKEN" not in write
        assert "$SAGAKIT_API_TOKEN" in write

    def test_the_read_token_cannot_write(self, client: TestClient, saga_id: str) -> None:
        before = listing(client, READ)
        for method, path, body in WRITES:
            url = path.format(id=saga_id)
            response = client.request(method, url, json=body, headers=READ)

            problem = assert_problem(response, 403)
            assert "read-only token" in problem["detail"]
            assert url in problem["detail"]
        assert listing(client, READ) == before
        assert wait_settled(client, saga_id, READ)["status"] == "completed"

    @pytest.mark.parametrize("headers", [READ, WRITE], ids=["read-token", "api-token"])
    def test_either_token_reads(
        self, client: TestClient, saga_id: str, headers: dict[str, str]
    ) -> None:
        assert saga_id in [item["id"] for item in listing(client, headers)]
        assert wait_settled(client, saga_id, headers)["id"] == saga_id
        assert last_event(client, saga_id, headers) == {"id": saga_id, "status": "completed"}
        robots = client.get("/api/robots", headers=headers)
        assert robots.status_code == 200, robots.text
        assert len(robots.json()) == 8

    def test_the_api_token_starts_and_cancels(self, client: TestClient) -> None:
        saga_id = start(client, SLOW_MISSION)

        refused = client.post(f"/api/sagas/{saga_id}/cancel", headers=READ)
        cancelled = client.post(
            f"/api/sagas/{saga_id}/cancel", json={"reason": "operator said so"}, headers=WRITE
        )

        assert refused.status_code == 403
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["id"] == saga_id
        assert cancelled.json()["status"] in ("compensating", "compensated")
        detail = wait_settled(client, saga_id, READ)
        assert detail["status"] == "compensated"
        assert "operator said so" in json.dumps(detail["history"])
        assert client.post(f"/api/sagas/{saga_id}/retry", headers=WRITE).status_code == 409
        assert client.post("/api/sagas/no-such-saga/retry", headers=WRITE).status_code == 404

    def test_health_metrics_and_docs_stay_open(self, client: TestClient) -> None:
        for path in ("/healthz", "/metrics", "/openapi.json", "/docs", "/static/swagger/VERSION"):
            assert client.get(path).status_code == 200, path

    def test_the_document_declares_the_bearer_scheme_on_the_guarded_routes(
        self, client: TestClient
    ) -> None:
        spec = client.get("/openapi.json").json()

        scheme = spec["components"]["securitySchemes"]["bearer"]
        assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
        operations = {
            (method.upper(), path): op
            for path, ops in spec["paths"].items()
            for method, op in ops.items()
        }
        guarded = {key for key, op in operations.items() if op.get("security")}
        assert guarded == {key for key in operations if key[1].startswith("/api/")}
        assert ("GET", "/healthz") not in guarded
        assert ("GET", "/api/robots") in guarded  # added by the SLAM example's hook
        for key in guarded:
            assert operations[key]["security"] == [{"bearer": []}], key
            assert {"401", "403"} <= set(operations[key]["responses"]), key


def bare_client(tmp_path: Path, **overrides: Any) -> TestClient:
    """An app on a fresh SQLite file, its lifespan (the embedded worker) not started."""
    url = f"sqlite:///{tmp_path}/api.db"
    return TestClient(create_app(embedded_settings(url, **overrides)))


class TestProtectedSystemRoutes:
    def test_health_and_metrics_need_a_token_when_the_setting_says_so(self, tmp_path: Path) -> None:
        client = bare_client(tmp_path, api_protect_system=True, **TOKENS)

        for path in ("/healthz", "/metrics"):
            assert_problem(client.get(path), 401)
            assert_problem(client.get(path, headers={"Authorization": "Bearer nope"}), 401)
            assert client.get(path, headers=READ).status_code == 200, path
            assert client.get(path, headers=WRITE).status_code == 200, path
        assert client.get("/docs").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert paths["/metrics"]["get"]["security"] == [{"bearer": []}]

    def test_the_setting_alone_protects_nothing(self, tmp_path: Path) -> None:
        client = bare_client(tmp_path, api_protect_system=True)

        assert client.get("/metrics").status_code == 200
        assert client.get("/api/sagas").status_code == 200

    def test_without_a_read_token_there_is_no_403_to_document(self, tmp_path: Path) -> None:
        client = bare_client(tmp_path, api_token="s3cret")

        assert_problem(client.get("/api/sagas", headers=READ), 401)
        spec = client.get("/openapi.json").json()
        responses = spec["paths"]["/api/sagas"]["post"]["responses"]
        assert "401" in responses
        assert "403" not in responses


class TestSettings:
    def test_a_read_token_needs_the_api_token(self) -> None:
        with pytest.raises(ValidationError, match="SAGAKIT_API_TOKEN is not"):
            Settings(api_read_token="r3ad-only")

    def test_the_read_token_must_differ_from_the_api_token(self) -> None:
        with pytest.raises(ValidationError, match="must differ"):
            Settings(api_token="same", api_read_token="same")


@pytest.fixture
def hook_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A module named in SAGAKIT_IMPORTS whose register_api the test fills in."""
    module = types.ModuleType("sagakit_test_api_hook")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def hooked_app(tmp_path: Path, module: types.ModuleType) -> FastAPI:
    settings = embedded_settings(
        f"sqlite:///{tmp_path}/api.db", imports=["sagakit_examples.slam", module.__name__], **TOKENS
    )
    return create_app(system=System(settings, migrate=False))


class TestRoutesFromHooks:
    def test_a_hook_route_is_guarded_like_the_others(
        self, tmp_path: Path, hook_module: types.ModuleType
    ) -> None:
        def register_api(app: FastAPI) -> None:
            @app.get("/api/extra")
            def extra() -> dict[str, str]:
                return {"hello": "reader"}

            @app.post("/api/extra")
            def change() -> dict[str, str]:
                return {"hello": "writer"}

        hook_module.register_api = register_api  # type: ignore[attr-defined]
        client = TestClient(hooked_app(tmp_path, hook_module))

        assert_problem(client.get("/api/extra"), 401)
        assert client.get("/api/extra", headers=READ).json() == {"hello": "reader"}
        assert_problem(client.post("/api/extra", headers=READ), 403)
        assert client.post("/api/extra", headers=WRITE).json() == {"hello": "writer"}

    def test_an_api_route_the_token_cannot_guard_is_refused(
        self, tmp_path: Path, hook_module: types.ModuleType
    ) -> None:
        def register_api(app: FastAPI) -> None:
            app.mount("/api/files", StaticFiles(directory=tmp_path))

        hook_module.register_api = register_api  # type: ignore[attr-defined]

        with pytest.raises(RuntimeError, match="/api/files is not guarded"):
            hooked_app(tmp_path, hook_module)
