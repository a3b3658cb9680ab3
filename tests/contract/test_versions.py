"""Several versions of one saga type: each saga is advanced by the one it started with."""

from __future__ import annotations

import pytest

from sagakit import Engine, Saga, Step, UnknownSagaType, VersionNotDeployed
from sagakit.store import SqlLog, make_db
from tests.support.recording import RecordingDispatcher
from tests.support.rig import Rig

V1 = Saga("order", [Step("a", "svc.a", "svc.undo_a"), Step("b", "svc.b", "svc.undo_b")])
V2 = Saga(
    "order",
    [
        Step("a", "svc.a", "svc.undo_a"),
        Step("c", "svc.c", "svc.undo_c"),
        Step("b", "svc.b", "svc.undo_b"),
    ],
    version=2,
)


def test_new_starts_take_the_newest_version_or_a_pinned_one(db_url: str) -> None:
    rig = Rig(db_url, {"order": V1}, versions=(V2,))
    newest = rig.engine.start("order", {}).saga_id
    pinned = rig.engine.start("order", {}, version=1).saga_id
    assert rig.queries.get(newest).state.definition_version == 2
    assert rig.queries.get(pinned).state.definition_version == 1
    with pytest.raises(
        VersionNotDeployed, match=r"version 3 is not deployed here \(deployed: v1, v2\)"
    ):
        rig.engine.start("order", {}, version=3)
    with pytest.raises(UnknownSagaType, match="unknown saga type 'other'"):
        rig.engine.start("other", {}, version=1)


def test_a_saga_is_advanced_by_its_own_version_only(db_url: str) -> None:
    rig = Rig(db_url, {"order": V1})
    saga_id = rig.engine.start("order", {}).saga_id
    first = rig.last()
    # Upgraded: versions 1 and 2 side by side. The saga goes on as version 1 says.
    both = Rig(db_url, {"order": V2}, versions=(V1,))
    both.engine.finish(first.kwargs, first.task_id, output={}, snapshot=rig.carried(first))
    assert [m.kwargs["step"] for m in both.dispatcher.for_saga(saga_id)] == ["b"]
    second = both.last()
    # Version 1 gone: its saga is neither advanced nor sent anything, by event or sweep.
    only = Engine(SqlLog(make_db(db_url, autocommit=True)), {"order": V2}, RecordingDispatcher())
    with pytest.raises(VersionNotDeployed, match="'order' version 1 is not deployed here"):
        only.finish(second.kwargs, second.task_id, output={})
    with pytest.raises(VersionNotDeployed):
        only.cancel(saga_id)
    assert rig.queries.get(saga_id).status == "running"
    assert rig.queries.steps(saga_id)[-1].state.status == "running"


def test_the_read_side_tells_a_saga_whose_version_no_live_worker_has(db_url: str) -> None:
    old = Rig(db_url, {"order": V1})
    stranded = old.engine.start("order", {}).saga_id
    new = Rig(db_url, {"order": V2})
    current = new.engine.start("order", {}).saga_id
    queries = new.queries
    assert queries.deployed() is None  # no worker has said yet
    assert queries.detail(stranded)["definition_deployed"] is None
    new.sweeper.beat()  # a worker with version 2 only
    assert queries.deployed() == {"order": {2}}
    assert queries.detail(stranded)["definition_deployed"] is False
    assert queries.detail(current)["definition_deployed"] is True
    listed, _ = queries.page(saga_type="order")
    assert {v["id"]: v["definition_deployed"] for v in listed} == {
        stranded: False,
        current: True,
    }
    old.sweeper_for("w2@test", pid=200).beat()  # and one with version 1
    assert queries.detail(stranded)["definition_deployed"] is True
