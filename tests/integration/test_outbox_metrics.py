"""The outbox gauges of /metrics through a broker outage: sagas whose messages the broker
refuses, a real `sagakit worker` whose sweeper sends them once the broker is back (to a queue
nobody takes yet), then a worker that takes them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sagakit import Settings, System
from sagakit.api import create_app
from tests.integration.conftest import worker_env
from tests.support.cluster import Cluster, wait_for
from tests.support.redis_server import RedisServer
from tests.support.served import serve

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
SAGAS = 3
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
UNCLAIMED = "sagakit_outbox_oldest_unclaimed_seconds"
GAUGES = (
    "sagakit_outbox_unsent",
    "sagakit_outbox_outstanding",
    "sagakit_outbox_oldest_unsent_seconds",
    UNCLAIMED,
)


def scrape(http: httpx.Client) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def gauge(samples: Samples, name: str) -> float:
    return samples[(name, frozenset())]


def completed(samples: Samples) -> float:
    labels = frozenset({("saga_type", "linear"), ("outcome", "completed")})
    return samples[("sagakit_sagas_finished_total", labels)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)  # not started: its port refuses every connection
    yield server
    server.stop()


def test_outbox_gauges_follow_messages_unsent_then_unclaimed_until_a_worker_takes_them(
    pg_databases: Callable[[], str], broker: RedisServer, tmp_path: Path
) -> None:
    env = worker_env(pg_databases(), broker.url)
    settings = Settings(
        database_url=env["SAGAKIT_DATABASE_URL"],
        broker_url=broker.url,
        imports=["tests.support.workload"],
    )
    system = System(settings)  # the API runs no worker and no sweeper: the broker is not embedded
    workers = Cluster(env, tmp_path)
    with (
        serve(create_app(system=system)) as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        idle = scrape(http)
        assert all(gauge(idle, name) == 0 for name in GAUGES)

        # The API refuses to start a saga while its broker is down; a saga the engine moves
        # on meanwhile (here: starts) leaves its messages in the outbox.
        body = {"type": "linear", "input": {"faults": {}}}
        assert http.post("/api/sagas", json=body).status_code == 503
        ids = [system.engine.start("linear", {"faults": {}}).saga_id for _ in range(SAGAS)]

        down = scrape(http)
        assert gauge(down, "sagakit_outbox_unsent") == SAGAS
        assert gauge(down, "sagakit_outbox_outstanding") == SAGAS
        assert gauge(down, UNCLAIMED) == 0  # nothing was sent
        first_age = gauge(down, "sagakit_outbox_oldest_unsent_seconds")
        assert first_age > 0
        wait_for(
            lambda: gauge(scrape(http), "sagakit_outbox_oldest_unsent_seconds") > first_age + 0.2,
            10,
            "the oldest unsent message to age",
        )

        broker.start()
        try:
            # This worker takes only sagakit's own queue: its sweeper sends the messages to
            # the steps' queue, where nobody takes them.
            workers.start("-c", "1", "-Q", "sagakit")
            wait_for(
                lambda: gauge(scrape(http), "sagakit_outbox_unsent") == 0,
                30,
                f"the sweeper to send the messages\n{workers.logs()}",
            )
            sent = scrape(http)
            assert gauge(sent, "sagakit_outbox_oldest_unsent_seconds") == 0
            assert gauge(sent, "sagakit_outbox_outstanding") == SAGAS
            assert broker.queued("work") == SAGAS
            first_unclaimed = gauge(sent, UNCLAIMED)
            wait_for(
                lambda: gauge(scrape(http), UNCLAIMED) > first_unclaimed + 0.2,
                10,
                "the oldest unclaimed message to age",
            )

            workers.start("-c", "1")  # every queue: it takes them
            wait_for(
                lambda: completed(scrape(http)) == SAGAS,
                60,
                f"the sagas to complete\n{workers.logs()}",
            )
            up = scrape(http)
        finally:
            workers.stop()
    assert all(gauge(up, name) == 0 for name in GAUGES)
    for step in ("a", "b", "c", "d"):
        labels = frozenset(
            {
                ("saga_type", "linear"),
                ("step", step),
                ("direction", "action"),
                ("status", "succeeded"),
            }
        )
        assert up[("sagakit_step_attempts_total", labels)] == SAGAS
    assert all(system.queries.get(saga_id).status == "completed" for saga_id in ids)
    system.close()
