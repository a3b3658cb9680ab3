"""Existing Celery tasks as saga steps, on the shop's own worker, with its module unchanged.

The shop's worker is ``celery -A tests.support.shop_app worker`` (its app calls
``sagakit.adopt(app)``; `shop_tasks` has no sagakit import). With the saga log it writes
the outcomes itself; without it (``remote``) it sends them to the sagakit queue.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sagakit import Settings, System
from sagakit.runtime.dispatch import CeleryDispatcher
from sagakit.store import recovery
from tests.integration.conftest import worker_env
from tests.support.client import Client
from tests.support.cluster import ROOT, Cluster, wait_for
from tests.support.history import steps_with

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
CELERY = str(Path(sys.executable).parent / "celery")
KEY = "a-key-shared-by-every-process"


@dataclass
class Shop:
    client: Client
    cluster: Cluster
    log: Path
    """The shop worker's log."""
    with_log: bool
    """Whether the shop's worker reaches the saga log."""


@pytest.fixture(scope="module", params=["saga log", "remote"])
def shop(
    request: pytest.FixtureRequest,
    pg_url: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Shop]:
    logdir = tmp_path_factory.mktemp("shop")
    cluster = Cluster(worker_env(pg_url, redis_url), logdir)
    cluster.env["SAGAKIT_IMPORTS"] = "tests.support.shop_sagas"
    env = {**cluster.env, "SHOP_BROKER_URL": redis_url}
    key = None
    if request.param == "remote":
        del env["SAGAKIT_DATABASE_URL"]
        key = KEY  # a worker without the saga log runs only signed messages
        env["SAGAKIT_MESSAGE_KEY"] = cluster.env["SAGAKIT_MESSAGE_KEY"] = KEY
    log_path = logdir / "shop.log"
    log = log_path.open("wb")
    service = subprocess.Popen(
        [
            CELERY,
            "-A",
            "tests.support.shop_app",
            "worker",
            "-Q",
            "shop,payments",
            "-c",
            "2",
            "--hostname",
            "shop@%h",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    cluster.procs.append(service)
    system = System(
        Settings(
            database_url=pg_url,
            broker_url=redis_url,
            imports=["tests.support.shop_sagas"],
            redrive_after=4.0,
            timeout_grace=1.0,
            message_key=key,
        )
    )
    try:
        wait_for(lambda: b" ready." in log_path.read_bytes(), 60, "the shop's worker")
        cluster.start("-Q", "sagakit", "-c", "1", name="recorder")
        yield Shop(Client(system), cluster, log_path, request.param == "saga log")
    finally:
        system.close()
        cluster.stop()


def test_a_step_is_the_existing_task_on_its_own_queue(shop: Shop) -> None:
    client, cluster = shop.client, shop.cluster
    input = {"sku": "book", "qty": 2, "amount": 30, "address": "home", "flaky": True}
    saga_id = client.start("order", input).saga_id
    assert client.wait(saga_id, timeout=60).status == "completed", cluster.logs()
    runs = {a.step: a for a in client.attempts(saga_id)}
    assert {s: (a.task_name, a.queue) for s, a in runs.items()} == {
        "reserve": ("shop.reserve", "shop"),
        "charge": ("shop.charge", "payments"),
        "ship": ("shop.ship", "shop"),
    }
    assert runs["reserve"].output == {"reservation_id": "r-book-2"}
    assert runs["charge"].output == {"charge_id": f"ch-{saga_id}", "amount": 30}
    # Celery's own retry (autoretry_for) ran inside the one attempt sagakit sent.
    assert runs["ship"].output == {"tracking": f"t-{saga_id}", "to": "home", "tries": 2}
    assert [a.attempt for a in runs.values()] == [1, 1, 1]
    assert all((a.worker or "").startswith("shop@") for a in runs.values())
    # The shop's queues are its own worker's: sagakit's workers (and `sagakit up`) leave them.
    assert client.system.queues == {"sagakit"}
    # With the saga log, the shop's worker beats a heartbeat of its own, as sagakit's do.
    beating = {w.name.split("@")[0] for w in recovery.workers(client.system.process.db)}
    assert ("shop" in beating) == shop.with_log and "recorder" in beating


def test_compensations_take_their_arguments_from_the_steps_outputs(
    shop: Shop,
) -> None:
    client, cluster = shop.client, shop.cluster
    declined = client.start("order", {"sku": "pen", "qty": 1, "amount": 500, "address": "x"})
    lost = client.start("order", {"sku": "cup", "qty": 3, "amount": 20, "address": "nowhere"})
    for started in (declined, lost):
        assert client.wait(started.saga_id, timeout=60).status == "compensated", cluster.logs()
    failed = {a.step: a for a in client.attempts(declined.saga_id) if a.direction == "action"}
    assert "ValueError: card declined for 500" in (failed["charge"].error or "")
    undo = [a for a in client.attempts(lost.saga_id) if a.direction == "compensation"]
    assert [(a.step, a.task_name, a.status) for a in undo] == [
        ("charge", "shop.refund", "succeeded"),
        ("reserve", "shop.release", "succeeded"),
    ]
    history = [
        (h.event, h.step, (h.detail or {}).get("output"))
        for h in client.history(lost.saga_id)
        if h.event == "step_compensated"
    ]
    assert history == [
        ("step_compensated", "charge", {"refunded": f"ch-{lost.saga_id}"}),
        ("step_compensated", "reserve", {"released": "r-cup-3"}),
    ]


def test_a_copy_of_a_finished_attempt_does_not_run(shop: Shop) -> None:
    client, cluster, log = shop.client, shop.cluster, shop.log
    if not shop.with_log:
        pytest.skip("a worker without the saga log cannot check a delivery")
    saga_id = client.start("order", {"sku": "hat", "qty": 1, "amount": 5, "address": "h"}).saga_id
    assert client.wait(saga_id, timeout=60).status == "completed", cluster.logs()
    engine = client.system.engine
    saga = engine.definition("order")
    first = next(a for a in client.attempts(saga_id) if a.step == "reserve")
    now = datetime.now(UTC)
    copy = engine.message(saga, saga_id, "reserve", "action", 1, None, first.task_id, now)
    assert engine.send([copy]) == 1
    wait_for(
        lambda: f"Discarding revoked task: shop.reserve[{first.task_id}]" in log.read_text(),
        30,
        "the copy to be dropped",
    )
    assert log.read_text().count(f"shop.reserve[{first.task_id}] succeeded") == 1


def test_the_tasks_own_time_limit_times_its_attempt_out(shop: Shop) -> None:
    client, cluster = shop.client, shop.cluster
    quick = client.start("weighing", {"sku": "tea"}).saga_id
    slow = client.start("weighing", {"sku": "tea", "seconds": 3}).saga_id
    assert client.wait(quick, timeout=60).status == "completed", cluster.logs()
    assert client.wait(slow, timeout=60).status == "compensated", cluster.logs()
    assert steps_with(client, slow, "step_timed_out") == ["weigh"]


def test_without_the_log_only_signed_messages_run(shop: Shop) -> None:
    client, log = shop.client, shop.log
    if shop.with_log:
        pytest.skip("a worker with the saga log asks the log instead")
    engine = client.system.engine
    saga_id = uuid.uuid4().hex  # a saga the log never saw
    task_id = f"{saga_id}.01.reserve.fwd.1"
    message = engine.message(
        engine.definition("order"),
        saga_id,
        "reserve",
        "action",
        1,
        None,
        task_id,
        datetime.now(UTC),
        {"sku": "forged", "qty": 1},
    )
    assert message.call == {"sku": "forged", "qty": 1}
    assert CeleryDispatcher(client.system.celery).send([message]) == []  # unsigned
    wait_for(
        lambda: f"delivery of {task_id} refused: unsigned" in log.read_text(),
        30,
        "the shop's worker to refuse the unsigned message",
    )
    wait_for(
        lambda: f"Discarding revoked task: shop.reserve[{task_id}]" in log.read_text(),
        30,
        "the unsigned message to be dropped",
    )
    assert f"shop.reserve[{task_id}] succeeded" not in log.read_text()
