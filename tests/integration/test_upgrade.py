"""An upgrade of a saga's definition while sagas of the old version are mid-flight.

Real workers, one deployment after another: version 1 only; versions 1 and 2 (a rolling
upgrade: the new worker starts, then the old one stops); version 2 only (version 1 is no
longer deployed: its saga waits, and says so); versions 1 and 2 again (it goes on).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagakit import Settings, System, VersionNotDeployed
from tests.integration.conftest import worker_env
from tests.support.api_app import TestClient
from tests.support.client import Client
from tests.support.cluster import SAGAKIT, Cluster, wait_for
from tests.support.history import steps_with

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
V1 = "tests.support.versioned_v1"
BOTH = f"{V1},tests.support.versioned_v2"
V2 = "tests.support.versioned_v2"


class Deployment:
    """Workers started and stopped one at a time, each with the definitions it is given."""

    def __init__(self, cluster: Cluster, pg_url: str, redis_url: str) -> None:
        self.cluster = cluster
        self.pg_url = pg_url
        self.redis_url = redis_url
        self.clients: list[System] = []

    def worker(self, imports: str, name: str) -> subprocess.Popen[bytes]:
        self.cluster.env["SAGAKIT_IMPORTS"] = imports
        return self.cluster.start("-Q", "ver,sagakit", "-c", "1", name=name)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGTERM)  # warm shutdown: its heartbeat row goes too
        proc.wait(20)

    def client(self, imports: str) -> Client:
        system = System(
            Settings(
                database_url=self.pg_url,
                broker_url=self.redis_url,
                imports=imports.split(","),
                redrive_after=4.0,
                timeout_grace=1.0,
            )
        )
        self.clients.append(system)
        return Client(system)


@pytest.fixture
def deployment(
    pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    cluster = Cluster(worker_env(pg_url, redis_url), tmp_path_factory.mktemp("upgrade"))
    deployed = Deployment(cluster, pg_url, redis_url)
    try:
        yield deployed
    finally:
        for system in deployed.clients:
            system.close()
        cluster.stop()


def test_sagas_finish_on_the_version_they_started_with(
    deployment: Deployment, tmp_path: Path
) -> None:
    gate, late = tmp_path / "gate", tmp_path / "late"
    old = deployment.worker(V1, "v1")
    before = deployment.client(V1)
    waiting = before.start("ordering", {"gate": str(gate)}).saga_id
    wait_for(lambda: steps_with(before, waiting, "step_failed"), 30, "step a to be retrying")

    # The rolling upgrade: a worker with both versions, then the old one stops.
    new = deployment.worker(BOTH, "v12")
    deployment.stop(old)
    after = deployment.client(BOTH)
    newest = after.start("ordering", {}).saga_id
    pinned = after.start("ordering", {}, version=1).saga_id
    gate.touch()
    for saga_id in (waiting, newest, pinned):
        assert after.wait(saga_id, timeout=60).status == "completed", deployment.cluster.logs()
    assert steps_with(after, waiting, "step_completed") == ["a", "b"]
    assert steps_with(after, pinned, "step_completed") == ["a", "b"]
    assert steps_with(after, newest, "step_completed") == ["a", "c", "b"]
    assert [after.get(s).state.definition_version for s in (waiting, newest, pinned)] == [1, 2, 1]

    # Version 1 is no longer deployed while one of its sagas is mid-flight.
    stranded = after.start("ordering", {"gate": str(late)}, version=1).saga_id
    wait_for(lambda: steps_with(after, stranded, "step_failed"), 30, "step a to be retrying")
    only_v2 = deployment.worker(V2, "v2")
    deployment.stop(new)
    queries = after.system.queries
    wait_for(
        lambda: queries.detail(stranded)["definition_deployed"] is False,
        30,
        "the saga to be reported as not deployed",
    )
    late.touch()
    shown = subprocess.run(
        [SAGAKIT, "show", stranded],
        env=deployment.cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "definition ordering v1 is not deployed" in " ".join(shown.split()), shown
    with TestClient(_api(deployment)) as http:
        body = http.get(f"/api/sagas/{stranded}").json()
        assert (body["definition_version"], body["definition_deployed"]) == (1, False)
        listed = http.get("/api/sagas", params={"type": "ordering"}).json()["items"]
        assert {s["id"]: s["definition_deployed"] for s in listed}[stranded] is False
    # Not advanced by version 2: still at step a, whose retries wait for version 1.
    v2_only = deployment.client(V2)
    with pytest.raises(VersionNotDeployed, match="ordering' version 1 is not deployed here"):
        v2_only.cancel(stranded)
    assert after.get(stranded).status == "running"
    assert steps_with(after, stranded, "step_completed") == []

    # Version 1 back: the saga goes on where it stood, on version 1.
    deployment.worker(BOTH, "again")
    deployment.stop(only_v2)
    assert after.wait(stranded, timeout=60).status == "completed", deployment.cluster.logs()
    assert steps_with(after, stranded, "step_completed") == ["a", "b"]


def _api(deployment: Deployment) -> object:
    from sagakit.api import create_app

    settings = Settings(
        database_url=deployment.pg_url, broker_url=deployment.redis_url, imports=[V2]
    )
    return create_app(settings)
