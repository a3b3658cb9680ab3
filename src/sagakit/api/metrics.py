"""Prometheus metrics computed from the saga log at scrape time.

Counting in each process would leave every worker with a partial count; reading the
shared saga log gives every scrape the whole truth, whichever process serves it. The log's
folded counters (`store.stats`) keep a scrape to a few indexed reads however long the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..core.state import ACTIVE_STATUSES, SETTLED_STATUSES
from ..store.stats import BUCKETS, Histogram, snapshot


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    bounds = [str(b) for b in BUCKETS] + ["+Inf"]
    return [(bound, float(n)) for bound, n in zip(bounds, histogram.buckets, strict=True)]


class SagaLogCollector(Collector):
    """Yields sagakit's metrics from one read of the saga log."""

    def __init__(self, db: sa.Engine, known_types: Iterable[str] = ()) -> None:
        self.db = db
        self.known_types = sorted(set(known_types))

    def collect(self) -> Iterator[Metric]:
        """Build every metric family."""
        snap = snapshot(self.db)
        types = sorted(set(self.known_types) | set(snap.started) | {k[0] for k in snap.in_flight})
        started = CounterMetricFamily(
            "sagakit_sagas_started", "Sagas started.", labels=["saga_type"]
        )
        for saga_type in types:
            started.add_metric([saga_type], snap.started.get(saga_type, 0))
        finished = CounterMetricFamily(
            "sagakit_sagas_finished",
            "Sagas that settled, by outcome (a retried saga counts again when it settles again).",
            labels=["saga_type", "outcome"],
        )
        for saga_type in types:
            for outcome in SETTLED_STATUSES:
                finished.add_metric(
                    [saga_type, outcome], snap.finished.get((saga_type, outcome), 0)
                )
        in_flight = GaugeMetricFamily(
            "sagakit_sagas_in_flight",
            "Sagas not yet settled, by status.",
            labels=["saga_type", "status"],
        )
        for saga_type in types:
            for status in ACTIVE_STATUSES:
                in_flight.add_metric(
                    [saga_type, status], snap.in_flight.get((saga_type, status), 0)
                )
        saga_seconds = HistogramMetricFamily(
            "sagakit_saga_duration_seconds",
            "Time from start to settling, by outcome.",
            labels=["saga_type", "outcome"],
        )
        for (saga_type, status), hist in sorted(snap.saga_durations.items()):
            saga_seconds.add_metric([saga_type, status], _buckets(hist), hist.total)
        step_seconds = HistogramMetricFamily(
            "sagakit_step_duration_seconds",
            "Run time of step attempts.",
            labels=["saga_type", "step", "direction"],
        )
        for (saga_type, step, direction), hist in sorted(snap.step_durations.items()):
            step_seconds.add_metric([saga_type, step, direction], _buckets(hist), hist.total)
        attempts = CounterMetricFamily(
            "sagakit_step_attempts",
            "Step attempts, by outcome.",
            labels=["saga_type", "step", "direction", "status"],
        )
        compensation_failures = CounterMetricFamily(
            "sagakit_compensation_failures",
            "Compensation attempts that failed or timed out.",
            labels=["saga_type", "step"],
        )
        failures: dict[tuple[str, str], int] = {}
        for (saga_type, step, direction, status), count in sorted(snap.attempts.items()):
            attempts.add_metric([saga_type, step, direction, status], count)
            if direction == "compensation" and status in ("failed", "timed_out"):
                key = (saga_type, step)
                failures[key] = failures.get(key, 0) + count
        for (saga_type, step), count in sorted(failures.items()):
            compensation_failures.add_metric([saga_type, step], count)
        outbox = GaugeMetricFamily(
            "sagakit_outbox_unsent",
            "Step messages due but not sent (a broker that refused them, a sweeper that is "
            "not running).",
        )
        outbox.add_metric([], snap.unsent)
        outstanding = GaugeMetricFamily(
            "sagakit_outbox_outstanding",
            "Step messages sent and not yet answered (queued or running).",
        )
        outstanding.add_metric([], snap.outstanding)
        oldest = GaugeMetricFamily(
            "sagakit_outbox_oldest_unsent_seconds",
            "Age of the oldest due message not sent yet (0 when none): the first thing to "
            "check when sagas stall.",
        )
        oldest.add_metric([], snap.oldest_unsent or 0.0)
        unclaimed = GaugeMetricFamily(
            "sagakit_outbox_oldest_unclaimed_seconds",
            "Age of the oldest message sent but not yet taken by a worker (held by no "
            "worker's heartbeat; 0 when none): its queue has no free worker.",
        )
        unclaimed.add_metric([], snap.oldest_unclaimed or 0.0)
        lag = GaugeMetricFamily(
            "sagakit_metrics_watermark_timestamp_seconds",
            "Up to when the saga log's counters are folded (the rest is read live).",
        )
        lag.add_metric([], snap.watermark.timestamp())
        yield from (
            started,
            finished,
            in_flight,
            saga_seconds,
            step_seconds,
            attempts,
            compensation_failures,
            outbox,
            outstanding,
            oldest,
            unclaimed,
            lag,
        )


def registry_for(db: sa.Engine, known_types: Iterable[str] = ()) -> CollectorRegistry:
    """A registry holding only sagakit's saga-log collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SagaLogCollector(db, known_types))
    return registry
