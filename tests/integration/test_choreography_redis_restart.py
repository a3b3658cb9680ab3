"""A Redis restart without persistence under a choreographed mission: what is lost, what is
seen, and that the tracker's timeout ends the saga compensated rather than stuck."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.choreography import Rig, rig_env, until
from tests.support.redis_server import RedisServer

# Slow (about 15 s of processes and a timeout): the default run has its parts, a lost group
# made again (tests/unit/choreography/test_bus.py) and a lost event timed out
# (test_choreography.py::test_dropped_event_times_out_and_compensates).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.postgres,
    pytest.mark.timeout(120),
]

TIMEOUT = 5.0
"""The tracker's step timeout here: shorter than the other rig's, which replays in time."""


def test_a_mission_in_flight_when_redis_restarts_ends_compensated(
    pg_databases: Callable[[], str], broker: RedisServer, tmp_path: Path
) -> None:
    env = rig_env(pg_databases(), broker.url, "restart:choreography", tmp_path, TIMEOUT)
    rig = Rig(env, tmp_path)
    rig.run_all()
    try:
        planning = rig.procs["planning"]
        planning.send_signal(signal.SIGSTOP)  # routes_planned will not come before the loss
        saga_id = rig.start()
        until(lambda: rig.queries.stored(saga_id).steps.get("plan_routes"), "robots to act")
        broker.restart()  # the stream, the groups and every pending entry are gone
        planning.send_signal(signal.SIGCONT)

        assert rig.settled(saga_id, timeout=TIMEOUT + 40) == "compensated"
        history = rig.history(saga_id)
        assert ("step_timed_out", "plan_routes") in history
        undone = [s for e, s in history if e == "step_compensated"]
        assert undone == ["plan_routes", "allocate_robots"]  # it may have planned: undone too
        assert rig.held(saga_id) == 0
        assert not rig.rows("SELECT 1 FROM slam_plans WHERE saga_id = :s", s=saga_id)

        # The groups were made again: the next mission runs as usual.
        assert rig.settled(rig.start()) == "completed"
    finally:
        rig.close()
