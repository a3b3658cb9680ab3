"""Step messages on a real Redis broker: what Celery would send, and the broker's epoch."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from sagakit.messages import SIGNATURE_HEADER, OutboxMessage, signature, signed
from sagakit.runtime.dispatch import EPOCH_KEY, BrokerWatch, CeleryDispatcher, RedisDispatcher
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path)
    server.start()
    yield server.url
    server.stop()


def _app(url: str) -> Celery:
    app = Celery("dispatch-test", broker=url, set_as_current=False)
    app.conf.task_default_queue = "celery"
    return app


def _message(
    queue: str,
    *,
    timeout: float | None = 10.0,
    state: str | None = None,
    call: dict[str, Any] | None = None,
    **extra: Any,
) -> OutboxMessage:
    kwargs: Any = {
        "saga_id": "0123456789abcdef",
        "saga_type": "order",
        "step": "reserve[2]",
        "attempt": 3,
        "direction": "compensation",
        "item": {"sku": "é-1", "n": [1, 2.5, None]},
        **extra,
    }
    return OutboxMessage(
        "0123456789abcdef",
        "0123456789abcdef.02.reserve-2.comp.3",
        "shop.release",
        queue,
        kwargs,
        timeout,
        datetime.now(UTC),
        state,
        call,
    )


def _popped(client: redis.Redis, queue: str) -> dict[str, Any]:
    raw = client.rpop(queue)
    assert raw is not None, f"nothing in {queue}"
    envelope = json.loads(raw)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    del envelope["properties"]["delivery_tag"]  # random per message
    return dict(envelope)


@pytest.mark.parametrize("time_limits", [False, True])
@pytest.mark.parametrize("timeout", [10.0, None])
@pytest.mark.parametrize("state", [None, 'f00d.[3,["é"]]'])
@pytest.mark.parametrize("key", [None, b"shared"])
def test_a_step_message_is_the_one_celery_and_kombu_would_push(
    broker: str, time_limits: bool, timeout: float | None, state: str | None, key: bytes | None
) -> None:
    app = _app(broker)
    client = redis.Redis.from_url(broker)
    celery_made = CeleryDispatcher(app, time_limits=time_limits, grace=2.0, key=key)
    ours = RedisDispatcher(app, time_limits=time_limits, grace=2.0, key=key)
    assert celery_made.send([_message("via-kombu", timeout=timeout, state=state)]) == []
    assert ours.send([_message("direct", timeout=timeout, state=state)]) == []
    expected, pushed = _popped(client, "via-kombu"), _popped(client, "direct")
    expected["properties"]["delivery_info"]["routing_key"] = "direct"
    assert pushed == expected
    assert pushed["headers"]["timelimit"] == (
        [timeout + 4.0, timeout] if time_limits and timeout else [None, None]
    )
    sent = _message("direct", timeout=timeout, state=state)
    assert pushed["headers"].get(SIGNATURE_HEADER) == (
        None if key is None else signature(key, sent.task_id, pushed["body"][1], state)
    )
    if key is not None:
        assert signed(
            key, sent.task_id, pushed["body"][1], state, pushed["headers"][SIGNATURE_HEADER]
        )
        assert not signed(
            b"other", sent.task_id, pushed["body"][1], state, pushed["headers"][SIGNATURE_HEADER]
        )
        tampered = {**pushed["body"][1], "attempt": 7}
        assert not signed(key, sent.task_id, tampered, state, pushed["headers"][SIGNATURE_HEADER])


def test_a_traced_step_message_carries_its_context_in_a_header_either_way(broker: str) -> None:
    app = _app(broker)
    client = redis.Redis.from_url(broker)
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    message = _message("via-kombu")
    assert CeleryDispatcher(app).send([replace(message, trace=trace)]) == []
    assert RedisDispatcher(app).send([replace(message, queue="direct", trace=trace)]) == []
    expected, pushed = _popped(client, "via-kombu"), _popped(client, "direct")
    expected["properties"]["delivery_info"]["routing_key"] = "direct"
    assert pushed == expected
    assert pushed["headers"]["traceparent"] == trace["traceparent"]


@pytest.mark.parametrize("time_limits", [False, True])
def test_an_existing_tasks_message_is_the_one_its_own_callers_would_push(
    broker: str, time_limits: bool
) -> None:
    app = _app(broker)
    client = redis.Redis.from_url(broker)
    call = {"charge_id": "ch-1", "amount": 2.5}
    celery_made = CeleryDispatcher(app, time_limits=time_limits, grace=2.0)
    ours = RedisDispatcher(app, time_limits=time_limits, grace=2.0)
    assert celery_made.send([_message("via-kombu", state="f00d.[1]", call=call)]) == []
    assert ours.send([_message("direct", state="f00d.[1]", call=call)]) == []
    expected, pushed = _popped(client, "via-kombu"), _popped(client, "direct")
    expected["properties"]["delivery_info"]["routing_key"] = "direct"
    assert pushed == expected
    assert pushed["body"][1] == call  # the task's own kwargs, nothing else
    assert pushed["headers"]["timelimit"] == [None, None]  # the task's own limits apply
    step = pushed["headers"]["sagakit_step"]
    assert (step["saga_type"], step["step"], step["attempt"]) == ("order", "reserve[2]", 3)


def test_the_first_send_into_an_emptied_broker_records_when_its_rows_were_sent(
    broker: str,
) -> None:
    app = _app(broker)
    client = redis.Redis.from_url(broker)
    dispatcher = RedisDispatcher(app)
    first = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    dispatcher.send([_message("q")], sent_at=first)
    dispatcher.send([_message("q")], sent_at=first + timedelta(seconds=5))
    assert BrokerWatch(app).epoch() == first  # the queues hold everything sent since
    client.flushdb()  # a restart without persistence, or a flush
    watch = BrokerWatch(app)
    before = datetime.now(UTC)
    epoch = watch.epoch()  # no send since: the sweeper marks the broker emptied now
    assert epoch is not None and before <= epoch <= datetime.now(UTC)
    assert float(client.get(EPOCH_KEY) or 0) == pytest.approx(epoch.timestamp(), abs=1e-5)
    dispatcher.send([_message("q")], sent_at=epoch + timedelta(seconds=1))
    assert watch.epoch() == epoch


def test_a_broker_that_cannot_be_asked_has_no_epoch_for_now(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    app = _app(server.url)  # never started
    assert BrokerWatch(app).epoch() is None
    assert RedisDispatcher(app).send([_message("q")]) != []  # refused: the sweeper sends it
