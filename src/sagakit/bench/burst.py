"""A burst of sagas started at once: waiting for them to settle and summing them up.

Shared by ``sagakit bench`` and ``sagakit bench --choreographed``, so both styles are
waited on and summed up (percentiles included) the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..queries import Queries

SETTLED = ("completed", "compensated", "failed")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def settle(queries: Queries, ids: Sequence[str], timeout: float) -> tuple[list[Any], int]:
    """Wait up to `timeout` seconds for the sagas to settle; their records, and how many
    had not."""
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        # One query per poll: the benchmark must not load the database it measures.
        statuses = queries.statuses(sorted(pending))
        pending = {s for s in pending if statuses.get(s) not in SETTLED}
        time.sleep(0.1)
    return [queries.get(s) for s in ids], len(pending)


def summary(
    records: Sequence[Any], sagas: int, steps: int, started: float, left: int
) -> dict[str, Any]:
    """Counts, sagas/s and latency percentiles of a settled burst."""
    done = [r for r in records if r.finished_at is not None]
    latencies = [(r.finished_at - r.created_at).total_seconds() for r in done]
    first = min(r.created_at for r in records)
    last = max((r.finished_at for r in done), default=first)
    elapsed = max((last - first).total_seconds(), 1e-9)
    result: dict[str, Any] = {
        "sagas": sagas,
        "steps": steps,
        "completed": sum(r.status == "completed" for r in records),
        "unfinished": left,
        "start_seconds": round(started, 3),
        "elapsed_seconds": round(elapsed, 3),
        "sagas_per_second": round(len(done) / elapsed, 1),
    }
    if latencies:
        result.update({f"p{q}_ms": round(percentile(latencies, q) * 1000, 1) for q in (50, 90, 99)})
        result["mean_ms"] = round(sum(latencies) / len(latencies) * 1000, 1)
    return result
