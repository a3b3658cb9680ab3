"""`sagakit bench --fan-out` and `--backlog`: how cost grows with a saga's width, and how a
backlog of sagas is worked off.

- Fan-out: sagas of W no-op branches (`bench_fan`), for each width, interleaved over rounds:
  CPU per branch by process (the worker, PostgreSQL, Redis: `cpu_ms` is their sum; the
  bench's own polling apart), SQL and Redis traffic per branch, and the bytes PostgreSQL
  wrote (its WAL) per branch. Per-branch cost that grows with W would show here.
- Backlog: N sagas started at once against one worker process with default settings, after a
  clean burst of the bench's in-flight size: how many messages were sent more than once, the
  throughput during the backlog against the clean burst's, and the worker's memory.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from ..settings import Settings
from .compare import BenchError, Harness


def _wal(harness: Harness) -> int | None:
    """PostgreSQL's WAL position in bytes (None on SQLite)."""
    db = harness.system.process.db
    if db.dialect.name != "postgresql":
        return None
    with db.connect() as conn:
        return int(
            conn.execute(sa.text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")).scalar_one()
        )


def fan_out(
    settings: Settings,
    widths: list[int],
    *,
    rounds: int = 3,
    timeout: float = 600.0,
    branches: int = 500,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Per-branch costs at each fan-out width; see the module docstring.

    A sample runs K sagas of width W at once, K = branches / W, so every width is measured
    over about as many branches; the same K sagas of width 0 (the fan-out stage skipped)
    measure what the sagas cost around their branches, which is subtracted.
    """
    harness = Harness(settings, concurrency=2)
    harness.start_worker()
    per: dict[int, list[dict[str, float]]] = {w: [] for w in widths}
    try:
        _fan(harness, min(widths), 1, timeout)  # warm up
        for number in range(1, rounds + 1):
            for width in widths:
                progress(f"round {number}/{rounds}: fan-out of {width}")
                count = max(1, round(branches / width))
                around = _fan(harness, 0, count, timeout)
                total = _fan(harness, width, count, timeout)
                per[width].append(
                    {k: (total[k] - around.get(k, 0.0)) / (count * width) for k in total}
                )
    finally:
        harness.stop_worker()
        harness.system.close()
    out: dict[str, Any] = {"rounds": rounds, "per_branch": {}}
    for width, samples in per.items():
        out["per_branch"][str(width)] = {
            key: round(statistics.median(s[key] for s in samples), 4) for key in samples[0]
        }
    lo, hi = out["per_branch"][str(min(widths))], out["per_branch"][str(max(widths))]
    out["ratio_widest_to_narrowest"] = {
        key: round(hi[key] / lo[key], 3)
        for key in ("cpu_ms", "cpu_ms_worker", "cpu_ms_postgres", "wal_bytes")
        if lo.get(key)
    }
    return out


def _fan(harness: Harness, width: int, count: int, timeout: float) -> dict[str, float]:
    """Totals of `count` sagas of `width` branches run at once."""
    wal_before = _wal(harness)
    with harness.measured() as spent:
        submitted = {
            harness.system.engine.start("bench_fan", {"width": width}).saga_id: 0.0
            for _ in range(count)
        }
        harness.wait("saga", submitted, timeout, poll=0.05)
    wal_after = _wal(harness)
    for saga_id in submitted:
        record = harness.system.queries.get(saga_id)
        if record.status != "completed":
            raise BenchError(f"fan-out saga {saga_id} ended {record.status}: {record.reason}")
    work = {role: s for role, s in spent["cpu"].items() if role != "bench"}
    result = {
        "cpu_ms": sum(work.values()) * 1000,
        **{f"cpu_ms_{role}": s * 1000 for role, s in spent["cpu"].items()},
        **dict(spent["traffic"].items()),
    }
    if wal_before is not None and wal_after is not None:
        result["wal_bytes"] = float(wal_after - wal_before)
    return result


def backlog(
    settings: Settings,
    sagas: int,
    *,
    steps: int = 4,
    burst: int = 200,
    concurrency: int = 1,
    timeout: float = 3600.0,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """A backlog of `sagas` against one worker; see the module docstring."""
    import psutil

    harness = Harness(settings, concurrency=concurrency)
    harness.start_worker()
    try:
        progress(f"a clean burst of {burst} sagas")
        clean = _settle_all(harness, burst, steps, timeout)
        assert harness.worker is not None
        worker = psutil.Process(harness.worker.pid)
        rss_before = _rss(worker)
        progress(f"a backlog of {sagas} sagas, started at once")
        peak = [rss_before]
        loaded = _settle_all(
            harness, sagas, steps, timeout, on_poll=lambda: peak.append(_rss(worker))
        )
        rss_after = _rss(worker)
    finally:
        harness.stop_worker()
        harness.system.close()
    sends, resends = loaded["sends"], loaded["resends"]
    return {
        "sagas": sagas,
        "steps": steps,
        "clean_burst": {k: v for k, v in clean.items() if k != "ids"},
        "backlog": {k: v for k, v in loaded.items() if k != "ids"},
        "resent_share": round(resends / max(sends, 1), 5),
        "throughput_vs_clean": round(loaded["steps_per_second"] / clean["steps_per_second"], 3),
        "worker_rss_mb": {
            "before": round(rss_before / 2**20, 1),
            "peak": round(max(peak) / 2**20, 1),
            "after": round(rss_after / 2**20, 1),
        },
    }


def _rss(process: Any) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except Exception:
            continue
    return total


def _settle_all(
    harness: Harness,
    sagas: int,
    steps: int,
    timeout: float,
    on_poll: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    engine, queries = harness.system.engine, harness.system.queries
    began = time.time()
    ids = [engine.start(f"bench_{steps}", {}).saga_id for _ in range(sagas)]
    started = time.time() - began
    left = set(ids)
    deadline = time.monotonic() + timeout
    while left:
        if time.monotonic() > deadline:
            raise BenchError(f"{len(left)} of {sagas} sagas did not settle within {timeout}s")
        time.sleep(0.5)
        on_poll()
        for chunk in _chunks(sorted(left), 1000):
            statuses = queries.statuses(chunk)
            left -= {s for s in chunk if statuses.get(s) in ("completed", "compensated", "failed")}
    db = harness.system.process.db
    with db.connect() as conn:
        sends, resends = 0, 0
        for chunk in _chunks(ids, 1000):
            row = conn.execute(
                sa.text(
                    "SELECT coalesce(sum(send_count), 0), "
                    "coalesce(sum(greatest(send_count - 1, 0)), 0) "
                    "FROM sagakit_steps WHERE saga_id IN :ids"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"ids": chunk},
            ).one()
            sends += int(row[0])
            resends += int(row[1])
    last = max(_finished(harness, chunk) for chunk in _chunks(ids, 1000))
    elapsed = max(last - began, 1e-6)
    return {
        "ids": ids,
        "start_seconds": round(started, 2),
        "elapsed_seconds": round(elapsed, 2),
        "steps_per_second": round(sagas * steps / elapsed, 1),
        "sends": sends,
        "resends": resends,
    }


def _finished(harness: Harness, ids: list[str]) -> float:
    db = harness.system.process.db
    with db.connect() as conn:
        value = conn.execute(
            sa.text("SELECT max(finished_at) FROM sagakit_sagas WHERE saga_id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": ids},
        ).scalar()
    if value is None:
        return 0.0
    if isinstance(value, str):  # SQLite
        from datetime import UTC, datetime

        return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()
    return float(value.timestamp())


def _chunks(values: list[str], size: int) -> list[list[str]]:
    return [values[i : i + size] for i in range(0, len(values), size)]
