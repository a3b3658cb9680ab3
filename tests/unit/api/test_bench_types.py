"""Benchmark sagas (`sagakit.bench.sagas`) stay out of a user's API: only `sagakit bench` registers
them, in its own System (``System(imports=["sagakit.bench.sagas"])``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sagakit import Settings, System, UnknownSagaType
from sagakit.api.metrics import registry_for
from sagakit.bench.sagas import BENCH_SAGAS
from sagakit.core.state import ACTIVE_STATUSES
from sagakit.settings import EMBEDDED_BROKER
from tests.support.served import embedded_server

BENCH_TYPES = {saga.name for saga in BENCH_SAGAS}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with (
        embedded_server(tmp_path_factory.mktemp("bench-types")) as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        yield client


def saga_types_in(text: str) -> set[str]:
    return {
        sample.labels["saga_type"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "saga_type" in sample.labels
    }


def test_a_users_api_shows_no_benchmark_saga_type(http: httpx.Client) -> None:
    started = http.post("/api/sagas", json={"type": "slam", "input": {"robots": 1, "area": "x"}})
    assert started.status_code == 202, started.text
    saga_id = started.json()["id"]
    deadline = time.monotonic() + 30
    while http.get(f"/api/sagas/{saga_id}").json()["status"] != "completed":
        assert time.monotonic() < deadline, "the mission did not complete"
        time.sleep(0.05)

    assert saga_types_in(http.get("/metrics").text) == {"slam"}
    listed = http.get("/api/sagas", params={"limit": 500}).json()["items"]
    assert {item["type"] for item in listed} == {"slam"}
    refused = http.post("/api/sagas", json={"type": "bench_4", "input": {}})
    assert refused.status_code == 422
    assert refused.json()["detail"] == "unknown saga type 'bench_4' (known: slam)"
    spec = http.get("/openapi.json").json()
    assert not [name for name in spec["components"]["schemas"] if "bench" in name.lower()]


def test_only_the_benchmarks_own_system_registers_its_sagas(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/log.db",
        broker_url=EMBEDDED_BROKER,
        imports=["sagakit_examples.slam"],
    )
    user = System(settings)
    bench = System(settings, imports=["sagakit.bench.sagas"])  # as `sagakit bench` builds it

    assert set(user.sagas) == {"slam"}
    assert set(bench.sagas) == {"slam", *BENCH_TYPES}
    with pytest.raises(UnknownSagaType, match=r"\(known: slam\)$"):
        user.engine.start("bench_4", {})
    user_types = saga_types_in_registry(user)
    assert user_types == {"slam"}
    # While a bench runs, its process knows its types: the in-flight gauge has them at 0.
    assert saga_types_in_registry(bench) == {"slam", *BENCH_TYPES}
    user.close()
    bench.close()


def saga_types_in_registry(system: System) -> set[str]:
    registry = registry_for(system.process.db, list(system.sagas))
    found = set()
    for family in registry.collect():
        for sample in family.samples:
            if family.name == "sagakit_sagas_in_flight":
                assert sample.labels["status"] in ACTIVE_STATUSES
                assert sample.value == 0
            if "saga_type" in sample.labels:
                found.add(sample.labels["saga_type"])
    return found
