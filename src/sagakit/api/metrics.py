"""Prometheus metrics computed from the saga log at scrape time.

Counting in each process would leave every worker with a partial count; reading the
shared saga log gives every scrape the whole truth, whichever process serves it.
"""

from __future__ import annotations

from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..core.machine import SETTLED_STATUSES
from ..store.stats import BUCKETS, Histogram, snapshot


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    bounds = [str(b) for b in BUCKETS] + ["+Inf"]
    return [(bound, float(n)) for bound, n in zip(bounds, histogram.buckets, strict=True)]


class SagaLogCollector(Collector):
    """Yields sagakit's metrics from one read of the saga log."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        """Build every metric family."""
        snap = snapshot(self.engine)
        started = CounterMetricFamily(
            "sagakit_sagas_started", "Sagas started.", labels=["saga_type"]
        )
        finished = CounterMetricFamily(
            "sagakit_sagas_finished",
            "Sagas that settled, by outcome.",
            labels=["saga_type", "outcome"],
        )
        in_flight = GaugeMetricFamily(
            "sagakit_sagas_in_flight",
            "Sagas not yet settled, by status.",
            labels=["saga_type", "status"],
        )
        totals: dict[str, int] = {}
        for (saga_type, status), count in sorted(snap.by_status.items()):
            totals[saga_type] = totals.get(saga_type, 0) + count
            if status in SETTLED_STATUSES:
                finished.add_metric([saga_type, status], count)
            else:
                in_flight.add_metric([saga_type, status], count)
        for saga_type, count in sorted(totals.items()):
            started.add_metric([saga_type], count)
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
        yield from (
            started,
            finished,
            in_flight,
            saga_seconds,
            step_seconds,
            attempts,
            compensation_failures,
        )


def registry_for(engine: sa.Engine) -> CollectorRegistry:
    """A registry holding only sagakit's saga-log collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SagaLogCollector(engine))
    return registry
