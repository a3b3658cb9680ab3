"""Only the orchestrator's messages make a service act (`Settings.message_key`).

A worker without the saga log cannot ask the log whether it scheduled an attempt: with
``SAGAKIT_MESSAGE_KEY`` set in every process it runs only step messages signed with the key,
and the outcomes it reports are signed too, so a sagakit worker records only those.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sagakit.messages import SIGNATURE_HEADER, signature
from sagakit.runtime.dispatch import CeleryDispatcher
from tests.integration.test_remote_outcomes import remote_stack
from tests.support.client import Client
from tests.support.cluster import Cluster, wait_for
from tests.support.history import assert_compensated_in_reverse, steps_with

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
KEY = "a-key-shared-by-every-process"


@pytest.fixture
def signed_stack(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[Client, Cluster]]:
    with remote_stack(pg_url, redis_url, tmp_path, SAGAKIT_MESSAGE_KEY=KEY) as stack:
        yield stack


def _lines(cluster: Cluster, needle: str) -> list[str]:
    return [line for line in cluster.logs().splitlines() if needle in line]


def test_with_a_key_only_signed_messages_make_a_service_act(
    signed_stack: tuple[Client, Cluster],
) -> None:
    client, cluster = signed_stack
    done = client.start("linear", {}).saga_id
    failed = client.start("linear", {"faults": {"c": ["fail"]}}).saga_id
    assert client.wait(done, timeout=60).status == "completed", cluster.logs()
    assert client.wait(failed, timeout=60).status == "compensated", cluster.logs()
    assert steps_with(client, done, "step_completed") == ["a", "b", "c", "d"]
    assert assert_compensated_in_reverse(client, failed) == ["b", "a"]

    # Messages the log never scheduled, for a saga it does not know: one unsigned, one
    # signed with a guessed key. The service worker refuses both and runs nothing.
    system = client.system
    saga = system.engine.sagas["linear"]
    app = system.celery
    forged: list[tuple[str, Path]] = []
    for n, key in enumerate((None, b"guessed")):
        saga_id = uuid.uuid4().hex
        touched = cluster.logdir / f"forged-{n}"
        message = system.engine.message(
            saga,
            saga_id,
            "a",
            "action",
            1,
            None,
            f"{saga_id}.01.a.fwd.1",
            datetime.now(UTC),
            {"faults": {"a": [f"done:{touched}"]}},
        )
        forged.append((saga_id, touched))
        assert CeleryDispatcher(app, key=key).send([replace(message, state=None)]) == []
    whys = ("unsigned", "its signature does not hold")
    for (saga_id, touched), why in zip(forged, whys, strict=True):
        wait_for(
            lambda: _lines(cluster, f"delivery of {saga_id}.01.a.fwd.1 refused: {why}"),  # noqa: B023
            30,
            "the service worker to refuse the forged message",
        )
        assert not touched.exists(), "a forged message ran its step"

    # An outcome report for an attempt of a real saga, not signed: the recorder refuses it.
    report = {
        "message": {
            "saga_id": done,
            "saga_type": "linear",
            "step": "a",
            "attempt": 1,
            "direction": "action",
        },
        "task_id": f"{done}.01.a.fwd.1",
        "worker": "forger",
        "output": {"forged": True},
    }
    app.send_task("sagakit.record_outcome", kwargs=report, queue="sagakit", task_id="unsigned")
    # The same report signed with the key is taken (and found stale: the attempt is over).
    app.send_task(
        "sagakit.record_outcome",
        kwargs=report,
        queue="sagakit",
        task_id="signed",
        headers={SIGNATURE_HEADER: signature(KEY.encode(), report["task_id"], report, None)},
    )
    for task in ("unsigned", "signed"):
        wait_for(
            lambda task=task: any(  # type: ignore[misc]
                f"[{task}] succeeded" in line for line in _lines(cluster, "record_outcome")
            ),
            30,
            f"the recorder to take the {task} report",
        )
    assert len(_lines(cluster, "refused: not signed")) == 1, cluster.logs()
    assert all(a.worker != "forger" for a in client.attempts(done))
