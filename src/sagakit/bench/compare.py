"""`sagakit bench --compare`: a saga step against a raw Celery task and a Celery chain.

One run, one process tree, the configured broker and database, the same worker settings for
everything: a `sagakit worker` subprocess serves the ``bench`` queue, where the plain tasks
(`sagakit.bench.raw`) and the saga steps (`sagakit.bench.noop`) both run. The saga runs twice
over: as defined by default (each step a message of its own) and defined ``eager=True``
(a run of steps on one message, `runtime.eager`). Each round measures, in turn, for each
contender:

- latency: one unit at a time, from the call that submits it to the end of its last piece of
  work (the last task's own timestamp; the saga's ``finished_at``), median of the runs. The
  bench first sleeps past the unit's expected end (`QUIET`), then waits as a watching
  client would, blocked on Redis: on the list the last task pushes to, on the saga event
  stream for the saga's settling entry (polling the saga log only where the stream is not
  on the broker's Redis);
- throughput: N units submitted at once, units per second until the last one ends (sagas
  polled every 0.2 s: cheaper than reading every entry of the stream);
- CPU per unit, by process (this one, the worker and its pool, Redis, PostgreSQL's backends
  of this database), and SQL and Redis traffic per step (`bench.probe`).

The failure path is a chain whose step M-1 fails and whose error callback runs M-2
compensating tasks, against a saga whose step M-1 fails and compensates M-2 steps.
Rounds interleave the contenders, so a noisy neighbour costs them all alike; ratios are
taken within a round, then the median over rounds is reported.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..core.errors import SagaError
from ..core.state import SETTLED_STATUSES
from ..settings import Settings
from . import probe
from .sagas import BENCH_QUEUE, DONE_KEY

CONTENDERS = ("raw", "chain", "saga", "eager", "chain_fail", "saga_fail", "eager_fail")
QUIET = 1.5
"""In a latency run, the bench sleeps this many times the contender's median so far before
it waits (on the stream, for a saga): a chain's waiter wakes once, at its end, while a
saga's would wake at every entry of the event stream and compete with the steps."""
SAGAS = {
    "saga": "bench_{m}",
    "eager": "bench_eager_{m}",
    "saga_fail": "bench_fail_{m}",
    "eager_fail": "bench_eager_fail_{m}",
}
"""The saga type each saga contender starts (`bench.sagas`); an eager saga runs each next
step in the worker that finished the one before (`runtime.eager`)."""
SETTLED = frozenset(SETTLED_STATUSES)
LABELS = {
    "raw": "raw Celery task",
    "chain": "Celery chain of {m}",
    "saga": "sagakit saga of {m}",
    "eager": "eager sagakit saga of {m}",
    "chain_fail": "chain of {m}, fails at {m1}",
    "saga_fail": "saga of {m}, fails at {m1}",
    "eager_fail": "eager saga of {m}, fails at {m1}",
}


class BenchError(SagaError):
    """The bench cannot run as configured."""


@dataclass
class Phase:
    """What one contender did in one round."""

    latency: float
    """Median seconds from submit to end."""
    rate: float
    """Units per second with N in flight."""
    steps: int
    """Steps (tasks) per unit."""
    cpu: dict[str, float]
    """CPU seconds per unit, by role."""
    traffic: dict[str, float]
    """SQL and Redis traffic per step."""


@dataclass
class Result:
    """Every round of every contender, and the ratios a report shows."""

    steps: int
    in_flight: int
    rounds: list[dict[str, Phase]] = field(default_factory=list)

    def median(self, name: str, value: Callable[[Phase], float]) -> float:
        return statistics.median(value(r[name]) for r in self.rounds)

    def ratio(self, name: str, base: str, value: Callable[[Phase], float]) -> float:
        return statistics.median(value(r[name]) / value(r[base]) for r in self.rounds)

    def summary(self) -> dict[str, Any]:
        """The report: per contender, medians and ratios over the rounds."""
        out: dict[str, Any] = {
            "steps": self.steps,
            "in_flight": self.in_flight,
            "rounds": len(self.rounds),
        }
        for name in CONTENDERS:
            steps = self.rounds[0][name].steps
            row: dict[str, Any] = {
                "latency_ms": round(self.median(name, _latency) * 1000, 2),
                "latency_per_hop": round(self.ratio(name, "raw", _latency), 2),
                "steps_per_second": round(self.median(name, _rate), 1),
                "throughput_per_step_vs_raw": round(self.ratio(name, "raw", _rate), 3),
                "cpu_ms_per_unit": {
                    role: round(self.median(name, _cpu_of(role)) * 1000, 2)
                    for role in self.rounds[0][name].cpu
                },
                "per_step": {
                    key: round(self.median(name, _traffic_of(key)), 2)
                    for key in self.rounds[0][name].traffic
                },
                "steps": steps,
            }
            out[name] = row
        for label, headline in HEADLINES.items():
            out[label] = {
                key: round(self.ratio(name, base, value), 3)
                for key, (name, base, value) in headline.items()
            }
            # Each round's own ratios: how far a shared machine moved them between rounds.
            out[f"{label}_by_round"] = {
                key: [round(value(r[name]) / value(r[base]), 3) for r in self.rounds]
                for key, (name, base, value) in headline.items()
            }
        return out


def _latency(p: Phase) -> float:
    return p.latency


def _rate(p: Phase) -> float:
    return p.rate * p.steps


SAGA_VS_CHAIN: dict[str, tuple[str, str, Callable[[Phase], float]]] = {
    "latency": ("saga", "chain", _latency),
    "throughput": ("saga", "chain", _rate),
    "failure_path": ("saga_fail", "chain_fail", _latency),
}
"""The report's headline ratios: (contender, its baseline, the value compared)."""
HEADLINES = {
    "saga_vs_chain": SAGA_VS_CHAIN,
    # The same ratios for the saga defined ``eager=True``.
    "eager_vs_chain": {
        key: (name.replace("saga", "eager"), base, value)
        for key, (name, base, value) in SAGA_VS_CHAIN.items()
    },
}


def _cpu_of(role: str) -> Callable[[Phase], float]:
    return lambda p: p.cpu.get(role, 0.0)


def _traffic_of(key: str) -> Callable[[Phase], float]:
    return lambda p: p.traffic.get(key, 0.0)


class Harness:
    """A bench worker, the saga log and the broker, with what measuring them needs."""

    def __init__(self, settings: Settings, *, concurrency: int = 2, logdir: Path | None = None):
        if not settings.broker_url.startswith(("redis://", "rediss://")):
            raise BenchError(
                "sagakit bench runs its own worker on a Redis broker (or the embedded one): "
                "set SAGAKIT_BROKER_URL to redis://... (and SAGAKIT_DATABASE_URL, PostgreSQL "
                "for numbers that mean something)"
            )
        self.settings = settings
        self.concurrency = concurrency
        self.logdir = logdir or Path(tempfile.mkdtemp(prefix="sagakit-bench-"))
        self.tally = self.logdir / "tally"
        self.tally.mkdir(parents=True, exist_ok=True)
        os.environ[probe.TALLY] = str(self.tally)
        os.environ["SAGAKIT_BROKER_URL"] = settings.broker_url
        probe.install()
        from ..system import System

        self.system = System(settings, imports=["sagakit.bench.sagas"])
        self.celery = self.system.celery
        import redis

        self.redis = redis.Redis.from_url(settings.broker_url)
        publishes = getattr(self.system.engine.dispatcher, "publishes_events", False)
        self.stream = settings.events_stream if publishes else None
        self.worker: subprocess.Popen[bytes] | None = None

    # --- the worker -----------------------------------------------------------------

    def start_worker(self, timeout: float = 60.0) -> None:
        """Start the bench worker and wait until it consumes."""
        env = {
            **os.environ,
            "SAGAKIT_DATABASE_URL": self.settings.database_url,
            "SAGAKIT_BROKER_URL": self.settings.broker_url,
            "SAGAKIT_IMPORTS": ",".join([*self.settings.imports, "sagakit.bench.sagas"]),
            "SAGAKIT_LOG_LEVEL": "WARNING",
            probe.TALLY: str(self.tally),
        }
        if self.settings.redis_url:
            env["SAGAKIT_REDIS_URL"] = self.settings.redis_url
        sagakit = str(Path(sys.executable).parent / "sagakit")
        log = (self.logdir / "worker.log").open("wb")
        node = f"bench-{uuid.uuid4().hex[:6]}@%h"
        self.worker = subprocess.Popen(
            [sagakit, "worker", "-Q", BENCH_QUEUE, "-c", str(self.concurrency), "-n", node],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.redis.delete(DONE_KEY)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.worker.poll() is not None:
                raise BenchError(f"the bench worker exited; see {self.logdir / 'worker.log'}")
            if time.monotonic() > deadline:
                raise BenchError(f"the bench worker did not start; see {self.logdir}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        marker = uuid.uuid4().hex
        self.celery.send_task("sagakit.bench.raw", kwargs={"marker": marker}, queue=BENCH_QUEUE)
        return self._done({marker}, timeout=2.0, strict=False) != {}

    def stop_worker(self) -> None:
        """Stop the bench worker (warm shutdown, then SIGKILL)."""
        import signal

        if self.worker is None or self.worker.poll() is not None:
            return
        os.killpg(self.worker.pid, signal.SIGTERM)
        try:
            self.worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(5)

    # --- submitting and waiting -----------------------------------------------------

    def submit(self, name: str, steps: int) -> tuple[str, float]:
        """Submit one unit; (its key, the epoch second before the submitting call)."""
        at = time.time()
        if name in SAGAS:
            saga_type = SAGAS[name].format(m=steps)
            return self.system.engine.start(saga_type, {}).saga_id, at
        marker = uuid.uuid4().hex
        from celery import chain

        def raw(*, done: bool = False, fails: bool = False) -> Any:
            task = "sagakit.bench.raw_fail" if fails else "sagakit.bench.raw"
            kwargs = {"marker": marker} if done else {}
            return self.celery.signature(task, kwargs=kwargs, queue=BENCH_QUEUE, immutable=True)

        if name == "raw":
            self.celery.send_task("sagakit.bench.raw", kwargs={"marker": marker}, queue=BENCH_QUEUE)
        elif name == "chain":
            chain(*[raw() for _ in range(steps - 1)], raw(done=True), app=self.celery).apply_async()
        else:  # chain_fail: steps - 2 succeed, the next fails, steps - 2 compensate
            undo = chain(*[raw() for _ in range(steps - 3)], raw(done=True), app=self.celery)
            forward = chain(*[raw() for _ in range(steps - 2)], raw(fails=True), app=self.celery)
            forward.link_error(undo)
            forward.apply_async()
        return marker, at

    def _done(self, markers: set[str], timeout: float, strict: bool = True) -> dict[str, float]:
        """Epoch seconds at which each marked plain unit ended."""
        ended: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(ended) < len(markers):
            left = deadline - time.monotonic()
            if left <= 0:
                if strict:
                    raise BenchError(f"{len(markers) - len(ended)} Celery units did not end")
                break
            popped = self.redis.blpop([DONE_KEY], timeout=max(1, min(5, int(left))))
            if popped is None:
                continue
            text = popped[1].decode() if isinstance(popped[1], bytes) else str(popped[1])
            marker, _, at = text.partition(" ")
            if marker in markers:
                ended[marker] = float(at)
        return ended

    def _settled(
        self, ids: set[str], timeout: float, poll: float, since: str | None = None
    ) -> dict[str, float]:
        """Epoch seconds at which each saga settled (its ``finished_at``); waits on the
        event stream from entry `since` when there is one, else polls every `poll` s."""
        queries = self.system.queries
        left = set(ids)
        deadline = time.monotonic() + timeout
        while left:
            if time.monotonic() > deadline:
                raise BenchError(f"{len(left)} sagas did not settle within {timeout}s")
            if self.stream is not None and since is not None:
                since = self._settling(left, since, deadline)
                continue
            statuses = queries.statuses(sorted(left))
            left = {s for s in left if statuses.get(s) not in SETTLED}
            if left:
                time.sleep(poll)
        return {s: queries.get(s).finished_at.timestamp() for s in ids}  # type: ignore[union-attr]

    def _settling(self, left: set[str], since: str, deadline: float) -> str:
        """Read the event stream after `since` (blocking up to a second), removing sagas
        that settled from `left`; the id of the last entry read."""
        assert self.stream is not None
        block = max(1, min(1000, int((deadline - time.monotonic()) * 1000)))
        read: Any = self.redis.xread({self.stream: since}, count=1000, block=block)
        for _, entries in read or ():
            for entry_id, fields in entries:
                since = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                saga = fields.get(b"saga_id", b"").decode()
                if saga in left and fields.get(b"status", b"").decode() in SETTLED:
                    left.discard(saga)
        return since

    def stream_end(self) -> str | None:
        """The id of the event stream's last entry (where a wait starting now reads from)."""
        if self.stream is None:
            return None
        last = self.redis.xrevrange(self.stream, count=1)
        if not last:
            return "0-0"
        entry_id = last[0][0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def wait(
        self,
        name: str,
        submitted: dict[str, float],
        timeout: float,
        poll: float,
        since: str | None = None,
    ) -> dict[str, float]:
        """Wait for every unit; epoch seconds at which each ended. `since`: the event
        stream's last entry before the units were submitted."""
        if name in SAGAS:
            return self._settled(set(submitted), timeout, poll, since)
        return self._done(set(submitted), timeout)

    # --- what is measured -----------------------------------------------------------

    def roles(self) -> dict[str, list[int]]:
        """The pids whose CPU is counted, by role."""
        roles: dict[str, list[int]] = {"bench": [os.getpid()]}
        if self.worker is not None:
            roles["worker"] = [self.worker.pid]
        try:
            roles["redis"] = [int(self.redis.info("server")["process_id"])]
        except Exception:
            roles["redis"] = []
        roles["postgres"] = self._pg_backends()
        return roles

    def _pg_backends(self) -> list[int]:
        db = self.system.process.db
        if db.dialect.name != "postgresql":
            return []
        with db.connect() as conn:
            return [
                int(p)
                for p in conn.execute(
                    sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
                ).scalars()
            ]

    @contextmanager
    def measured(self) -> Iterator[dict[str, Any]]:
        """CPU and traffic spent inside the block (filled in when it ends)."""
        roles = self.roles()
        cpu_before = probe.cpu(roles)
        counted_before = probe.read(self.tally, time.time())
        out: dict[str, Any] = {}
        yield out
        ended = time.time()
        roles = {r: sorted(set(p) | set(self.roles().get(r, []))) for r, p in roles.items()}
        out["cpu"] = (probe.cpu(roles) - cpu_before).seconds
        out["traffic"] = (probe.read(self.tally, ended) - counted_before).values

    def phase(self, name: str, steps: int, in_flight: int, runs: int, timeout: float) -> Phase:
        """One contender, one round: latency over `runs`, then throughput with N in flight."""
        latencies: list[float] = []
        for _ in range(runs):
            since = self.stream_end()
            key, at = self.submit(name, steps)
            # Out of the way while the unit runs: its end is its own timestamp, and a waiter
            # woken by every stream entry would take the cores it runs on (`QUIET`).
            time.sleep(QUIET * (statistics.median(latencies) if latencies else 0.05))
            ended = self.wait(name, {key: at}, timeout, poll=0.002, since=since)
            latencies.append(ended[key] - at)
        with self.measured() as spent:  # polled: reading every entry would cost more
            submitted = dict(self.submit(name, steps) for _ in range(in_flight))
            ended = self.wait(name, submitted, timeout, poll=0.2)
        first = min(submitted.values())
        rate = in_flight / max(max(ended.values()) - first, 1e-6)
        units = in_flight
        tasks = tasks_per_unit(name, steps)
        return Phase(
            latency=statistics.median(latencies),
            rate=rate,
            steps=tasks,
            cpu={role: s / units for role, s in spent["cpu"].items()},
            traffic={key: v / (units * tasks) for key, v in spent["traffic"].items()},
        )


def tasks_per_unit(name: str, steps: int) -> int:
    """Tasks one unit runs: one raw task; M steps; on the failure path M - 2 steps that
    succeed, the one that fails and M - 2 compensations."""
    if name == "raw":
        return 1
    return 2 * steps - 3 if name.endswith("fail") else steps


def compare(
    settings: Settings,
    *,
    steps: int = 4,
    rounds: int = 3,
    in_flight: int = 200,
    runs: int = 20,
    concurrency: int = 2,
    timeout: float = 300.0,
    progress: Callable[[str], None] = lambda _: None,
) -> Result:
    """Run the comparison; see the module docstring."""
    if steps < 3:
        raise BenchError("--compare needs at least 3 steps (the failure path fails at M-1)")
    harness = Harness(settings, concurrency=concurrency)
    result = Result(steps, in_flight)
    harness.start_worker()
    try:
        for name in CONTENDERS:  # warm up: connections, prepared statements, imports
            harness.phase(name, steps, min(20, in_flight), 3, timeout)
        for number in range(1, rounds + 1):
            phases = {}
            for name in CONTENDERS:
                progress(f"round {number}/{rounds}: {name}")
                phases[name] = harness.phase(name, steps, in_flight, runs, timeout)
            result.rounds.append(phases)
    finally:
        harness.stop_worker()
        harness.system.close()
    return result
