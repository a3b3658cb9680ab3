"""The API on a broker nobody listens on (no server needed): 503 with the problem body.

The same with a broker that really stops and comes back: tests/integration/test_outages.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sagakit import Settings, System
from sagakit.api import create_app
from sagakit.outages import Unreachable
from tests.support.api_app import TestClient
from tests.support.redis_server import free_port


@pytest.fixture
def closed() -> int:
    return free_port()  # nothing listens there


@pytest.fixture
def client(tmp_path: Path, closed: int) -> Iterator[TestClient]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/api.db",
        broker_url=f"redis://:secret@127.0.0.1:{closed}/0",
        redis_url=None,
        imports=["tests.support.workload"],
    )
    with TestClient(create_app(settings)) as client:
        yield client


def expected(port: int) -> str:
    return (
        f"the broker at 127.0.0.1:{port} is unreachable (connection refused): "
        "check SAGAKIT_BROKER_URL and that Redis is running"
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/sagas", {"type": "linear", "input": {}}),
        ("/api/sagas/0123456789abcdef/cancel", None),
        ("/api/sagas/0123456789abcdef/retry", None),
    ],
)
def test_routes_that_send_messages_answer_503_naming_the_broker(
    client: TestClient, closed: int, path: str, body: object
) -> None:
    response = client.post(path, json=body)

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"detail": expected(closed), "field": None}
    assert client.get("/api/sagas").json()["items"] == []  # nothing recorded


def test_healthz_answers_503_with_a_problem_body_naming_the_broker(
    client: TestClient, closed: int
) -> None:
    response = client.get("/healthz")

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.json() == {
        "status": "degraded",
        "database": "ok",
        "broker": "unreachable: connection refused",
        "detail": expected(closed),
        "field": None,
    }
    assert "secret" not in response.text


def test_a_broker_other_than_redis_is_checked_with_a_kombu_connection(
    tmp_path: Path, closed: int
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/api.db",
        broker_url=f"amqp://guest:secret@127.0.0.1:{closed}//",
        redis_url=None,
        imports=["tests.support.workload"],
    )
    with System(settings) as system, pytest.raises(Unreachable) as raised:
        system.check_broker()

    assert str(raised.value) == (
        f"the broker at 127.0.0.1:{closed} is unreachable (connection refused): "
        "check SAGAKIT_BROKER_URL and that RabbitMQ is running"
    )


def test_the_dashboards_health_page_says_the_broker_is_unreachable(
    client: TestClient, closed: int
) -> None:
    page = client.get("/health")
    assert page.status_code == 200  # the saga log answers: only the queues' depths are unknown
    assert expected(closed) in page.text
