"""`sagakit bench --choreographed`: the same no-op saga run choreographed, in the same run.

M no-op steps, each one handler of a participant (``bench``) in its own transaction (inbox,
outbox) reacting to the previous step's event, and the tracker folding every event into
the saga log: what the choreographed style costs against the orchestrated burst measured
just before it on the same database. Participants and the tracker run as threads of this
process, as the orchestrated burst's embedded worker does.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from ..choreography import Choreography, Delivery, Local, Participant, Script, Track
from ..choreography.participant import Runner, guarded
from ..core.definition import StepKind
from ..queries import Queries
from ..settings import Settings
from ..store import make_db
from ..store.db import Pooled
from .burst import settle, summary

MAX_STEPS = 8

_state: dict[str, Any] = {}


def _database() -> Any:
    return _state["db"]


bench = Participant("bench", _database)
scripts = [
    Script(
        f"bench_choreo_{m}",
        starts="bench_started",
        tracks=tuple(
            Track(f"s{i}", "bench", done=f"s{i}_done", timeout=None, kind=StepKind.RETRIABLE)
            for i in range(1, m + 1)
        ),
        description=f"{m} no-op steps, choreographed",
    )
    for m in range(1, MAX_STEPS + 1)
]


@bench.on("bench_started", *(f"s{i}_done" for i in range(1, MAX_STEPS)))
def _next(d: Delivery, local: Local) -> None:
    steps = int(d.event.saga_type.rsplit("_", 1)[1])
    done = 0 if d.event.type == "bench_started" else int(d.event.type[1:].split("_")[0])
    if done < steps:
        local.emit(f"s{done + 1}_done", {"input": dict(d.event.input), "output": None})


def burst(
    settings: Settings, sagas: int, steps: int, *, concurrency: int = 2, timeout: float = 600.0
) -> dict[str, Any]:
    """Start `sagas` choreographed sagas of `steps` no-op steps at once; wait for all."""
    stream = f"{settings.choreography_stream}:bench:{uuid.uuid4().hex[:8]}"
    settings = settings.model_copy(update={"choreography_stream": stream})
    choreography = Choreography(settings, imports=[__name__])
    _state["db"] = make_db(settings.database_url)
    stop = threading.Event()
    tracker = choreography.tracker("bench-tracker")
    runners = [Runner(bench, choreography.bus, consumer=f"bench-{n}") for n in range(concurrency)]
    threads = [threading.Thread(target=r.run, args=(stop,), daemon=True) for r in runners]
    threads.append(threading.Thread(target=_track, args=(tracker, stop), daemon=True))
    for thread in threads:
        thread.start()
    queries = Queries(Pooled(make_db(settings.database_url)))
    try:
        began = time.monotonic()
        ids = [choreography.start(f"bench_choreo_{steps}", {}) for _ in range(sagas)]
        started = time.monotonic() - began
        records, left = settle(queries, ids, timeout)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        choreography.bus.client.delete(stream, f"{stream}:dead")
    return summary(records, sagas, steps, started, left)


def _track(tracker: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        if not guarded(tracker.step):
            stop.wait(1.0)
