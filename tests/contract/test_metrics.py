"""/metrics scraped over HTTP from a running API while an engine drives sagas on its saga log.

The engine (in-memory ports, a clock the test moves) writes the log; the API, served by
uvicorn, reads it at each scrape, which is parsed with prometheus_client's parser. Folding
(`store.stats.fold`, which the sweeper runs) is called with the clock moved past `LAG`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from sagakit import Settings, System
from sagakit.api import create_app
from sagakit.core.state import ACTIVE_STATUSES, SETTLED_STATUSES
from sagakit.messages import OutboxMessage
from sagakit.store import recovery, stats
from sagakit.store.recovery import Held
from tests.support.recording import FailingDispatcher
from tests.support.redis_server import free_port
from tests.support.rig import Rig
from tests.support.served import serve

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]
TYPES = ("fan", "two", "typed", "undo")
"""The saga types tests.support.rig defines: the API knows them."""
COUNTERS = (
    "sagakit_sagas_started_total",
    "sagakit_sagas_finished_total",
    "sagakit_step_attempts_total",
    "sagakit_compensation_failures_total",
    "sagakit_saga_duration_seconds_count",
    "sagakit_saga_duration_seconds_bucket",
    "sagakit_step_duration_seconds_count",
    "sagakit_step_duration_seconds_bucket",
)


class Scraper:
    """GET /metrics of a running API, parsed; every scrape is kept."""

    def __init__(self, http: httpx.Client, system: System) -> None:
        self.http = http
        self.system = system
        self.scrapes: list[Samples] = []

    def __call__(self) -> Samples:
        response = self.http.get("/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        samples: Samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in samples, f"{key} exported twice"
                samples[key] = sample.value
        self.scrapes.append(samples)
        return samples

    def assert_monotonic(self) -> None:
        """No counter went down from one scrape to the next (nor disappeared)."""
        for before, after in zip(self.scrapes, self.scrapes[1:], strict=False):
            for key, value in before.items():
                if key[0] in COUNTERS:
                    assert key in after, f"{key} disappeared"
                    assert after[key] >= value, f"{key} went down: {value} -> {after[key]}"


@pytest.fixture
def rig(db_url: str) -> Rig:
    return Rig(db_url)


@pytest.fixture
def scrape(db_url: str, rig: Rig) -> Iterator[Scraper]:
    # A broker nobody listens on: this API runs no worker and no sweeper of its own.
    settings = Settings(
        database_url=db_url,
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        imports=["tests.support.rig"],
    )
    system = System(settings)
    with serve(create_app(system=system)) as base, httpx.Client(base_url=base, timeout=10) as http:
        yield Scraper(http, system)


def family(samples: Samples, name: str) -> dict[tuple[str, ...], float]:
    """The samples called `name`, keyed by their label values in label-name order."""
    return {
        tuple(v for _, v in sorted(labels)): value
        for (n, labels), value in samples.items()
        if n == name
    }


def started(samples: Samples) -> dict[tuple[str, ...], float]:
    return family(samples, "sagakit_sagas_started_total")


def finished(samples: Samples) -> dict[tuple[str, ...], float]:
    """(outcome, saga type) -> count, zeros left out."""
    return {k: v for k, v in family(samples, "sagakit_sagas_finished_total").items() if v}


def attempts(samples: Samples) -> dict[tuple[str, ...], float]:
    """(direction, saga type, status, step) -> count."""
    return family(samples, "sagakit_step_attempts_total")


def in_flight(samples: Samples) -> dict[tuple[str, ...], float]:
    """(saga type, status) -> count, zeros left out."""
    return {k: v for k, v in family(samples, "sagakit_sagas_in_flight").items() if v}


def gauge(samples: Samples, name: str) -> float:
    return samples[(name, frozenset())]


AGES = ("sagakit_outbox_oldest_unsent_seconds", "sagakit_outbox_oldest_unclaimed_seconds")
"""Gauges measured against the API's clock, not the rig's: they change between scrapes."""


def without(samples: Samples, *names: str) -> Samples:
    return {key: value for key, value in samples.items() if key[0] not in names}


def new_messages(rig: Rig, since: int) -> list[OutboxMessage]:
    return rig.dispatcher.sent[since:]


def fail(rig: Rig, message: OutboxMessage, *, retryable: bool) -> None:
    rig.engine.finish(
        message.kwargs, message.task_id, error="refused", retryable=retryable, worker="w1@test"
    )


def run_to_failed(rig: Rig) -> str:
    """A saga whose b fails and whose compensation of a keeps failing: `failed`."""
    saga_id = rig.engine.start("two", {}).saga_id
    rig.complete(rig.last())
    fail(rig, rig.last(), retryable=False)
    for _ in range(20):  # each compensation attempt fails; the sweeper sends the next one
        if rig.queries.get(saga_id).status == "failed":
            return saga_id
        sent = len(rig.dispatcher.sent)
        rig.clock.advance(120)
        rig.sweeper.sweep()
        for message in new_messages(rig, sent) or [rig.last()]:
            if message.kwargs["direction"] == "compensation":
                rig.fail(message)
    raise AssertionError(f"saga {saga_id} is {rig.queries.get(saga_id).status}, not failed")


def test_with_nothing_in_flight_every_known_type_and_active_status_exports_zero(
    scrape: Scraper,
) -> None:
    samples = scrape()

    assert family(samples, "sagakit_sagas_in_flight") == {
        (saga_type, status): 0.0 for saga_type in TYPES for status in ACTIVE_STATUSES
    }
    assert started(samples) == {(saga_type,): 0.0 for saga_type in TYPES}
    assert family(samples, "sagakit_sagas_finished_total") == {
        (outcome, saga_type): 0.0 for saga_type in TYPES for outcome in SETTLED_STATUSES
    }
    assert attempts(samples) == {}
    assert gauge(samples, "sagakit_outbox_unsent") == 0
    assert gauge(samples, "sagakit_outbox_outstanding") == 0
    assert gauge(samples, "sagakit_outbox_oldest_unsent_seconds") == 0
    assert gauge(samples, "sagakit_outbox_oldest_unclaimed_seconds") == 0


def test_the_oldest_unclaimed_message_is_the_oldest_sent_that_no_worker_holds(
    rig: Rig, scrape: Scraper
) -> None:
    rig.engine.start("two", {})
    first = rig.last()
    rig.clock.advance(5)
    rig.engine.start("two", {})
    second = rig.last()
    rig.clock.advance(5)

    def oldest_unclaimed() -> float | None:
        return recovery.outbox(rig.db, rig.clock()).oldest_unclaimed

    assert oldest_unclaimed() == 10.0  # both sent, neither taken
    assert gauge(scrape(), "sagakit_outbox_oldest_unclaimed_seconds") > 0

    rig.held = [Held(first.task_id)]  # a worker reserved the first, and says so in its beat
    rig.sweeper.sweep()
    assert oldest_unclaimed() == 5.0

    rig.held = [Held(first.task_id, rig.clock().timestamp()), Held(second.task_id)]
    rig.sweeper.sweep()  # it runs the first and holds the second
    assert oldest_unclaimed() is None
    outbox = recovery.outbox(rig.db, rig.clock())
    assert (outbox.unsent, outbox.outstanding) == (0, 2)
    assert gauge(scrape(), "sagakit_outbox_oldest_unclaimed_seconds") == 0

    rig.clock.advance(3)
    rig.complete(first)  # b's message is sent now: unclaimed, for no time yet
    assert oldest_unclaimed() == 0.0
    rig.clock.advance(2)
    assert oldest_unclaimed() == 2.0


def test_an_unsent_message_is_not_unclaimed(db_url: str) -> None:
    rig = Rig(db_url)
    rig.engine.dispatcher = FailingDispatcher()  # the broker refuses: the sweeper will send
    rig.engine.start("two", {})
    rig.clock.advance(4)

    outbox = recovery.outbox(rig.db, rig.clock())

    assert (outbox.unsent, outbox.outstanding) == (1, 1)
    assert outbox.oldest_unsent == 4.0
    assert outbox.oldest_unclaimed is None


def test_counters_count_exactly_what_ran_across_folds_and_never_go_down(
    rig: Rig, scrape: Scraper
) -> None:
    for _ in range(3):  # three complete
        rig.engine.start("two", {})
        rig.complete(rig.last())
        rig.complete(rig.last())
    rig.engine.start("two", {})  # one fails at once, with nothing to undo
    fail(rig, rig.last(), retryable=False)
    flaky = rig.engine.start("two", {}).saga_id  # one fails once, then completes
    rig.fail(rig.last())
    sent = len(rig.dispatcher.sent)
    rig.clock.advance(2)  # past the retry's backoff: the sweeper sends it
    rig.sweeper.sweep()
    [retry] = new_messages(rig, sent)
    assert retry.kwargs["attempt"] == 2
    rig.complete(retry)
    rig.complete(rig.last())
    assert rig.queries.get(flaky).status == "completed"
    running = rig.engine.start("two", {}).saga_id  # one is still running
    first = rig.last()

    samples = scrape()
    assert started(samples) == {("fan",): 0, ("two",): 6, ("typed",): 0, ("undo",): 0}
    assert finished(samples) == {("completed", "two"): 4, ("compensated", "two"): 1}
    assert in_flight(samples) == {("two", "running"): 1}
    assert attempts(samples) == {
        ("action", "two", "succeeded", "a"): 4,
        ("action", "two", "failed", "a"): 2,
        ("action", "two", "succeeded", "b"): 4,
    }
    settled = frozenset({("saga_type", "two"), ("outcome", "completed")})
    assert samples[("sagakit_saga_duration_seconds_count", settled)] == 4
    before_fold = samples

    assert stats.fold(rig.db, rig.clock()) == 0  # nothing is older than the lag yet
    assert without(scrape(), *AGES) == without(before_fold, *AGES)
    rig.clock.advance(stats.LAG.total_seconds() + 1)
    assert stats.fold(rig.db, rig.clock()) == 6
    folded = scrape()
    watermark = "sagakit_metrics_watermark_timestamp_seconds"
    assert gauge(folded, watermark) > gauge(before_fold, watermark)
    assert without(folded, watermark, *AGES) == without(before_fold, watermark, *AGES)

    # After the watermark: the running saga ends, another compensates, a third starts.
    rig.complete(first)
    rig.complete(rig.last())
    rig.engine.start("two", {})
    rig.complete(rig.last())
    fail(rig, rig.last(), retryable=False)
    rig.complete(rig.last())  # the compensation of a
    rig.engine.start("typed", {"quantity": 1, "sku": "x"})
    assert rig.queries.get(running).status == "completed"

    expected_started = {("fan",): 0, ("two",): 7, ("typed",): 1, ("undo",): 0}
    expected_finished = {("completed", "two"): 5, ("compensated", "two"): 2}
    expected_attempts = {
        ("action", "two", "succeeded", "a"): 6,
        ("action", "two", "failed", "a"): 2,
        ("action", "two", "succeeded", "b"): 5,
        ("action", "two", "failed", "b"): 1,
        ("compensation", "two", "succeeded", "a"): 1,
    }
    for moved in (0.0, stats.LAG.total_seconds() + 1):  # live, then folded once more
        rig.clock.advance(moved)
        stats.fold(rig.db, rig.clock())
        samples = scrape()
        assert started(samples) == expected_started
        assert finished(samples) == expected_finished
        assert attempts(samples) == expected_attempts
        assert in_flight(samples) == {("typed", "running"): 1}
        step_seconds = family(samples, "sagakit_step_duration_seconds_count")
        assert step_seconds[("action", "two", "a")] == 8
    scrape.assert_monotonic()


def test_a_failure_stays_counted_when_the_saga_is_retried(rig: Rig, scrape: Scraper) -> None:
    saga_id = run_to_failed(rig)
    compensation_failures = family(scrape(), "sagakit_compensation_failures_total")
    assert finished(scrape.scrapes[-1]) == {("failed", "two"): 1}
    assert compensation_failures[("two", "a")] >= 1

    rig.engine.retry(saga_id)  # an operator resumes it: it compensates again
    assert finished(scrape()) == {("failed", "two"): 1}
    rig.complete(rig.last())
    assert rig.queries.get(saga_id).status == "compensated"
    assert finished(scrape()) == {("failed", "two"): 1, ("compensated", "two"): 1}
    rig.clock.advance(stats.LAG.total_seconds() + 1)
    stats.fold(rig.db, rig.clock())
    samples = scrape()
    assert finished(samples) == {("failed", "two"): 1, ("compensated", "two"): 1}
    for outcome in ("failed", "compensated"):
        labels = frozenset({("saga_type", "two"), ("outcome", outcome)})
        assert samples[("sagakit_saga_duration_seconds_count", labels)] == 1
    scrape.assert_monotonic()


@pytest.mark.postgres
def test_a_scrape_that_a_fold_overtakes_counts_each_saga_once(
    pg_databases: Callable[[], str],
) -> None:
    url = pg_databases()
    rig = Rig(url)
    for _ in range(4):
        rig.engine.start("two", {})
        rig.complete(rig.last())
        rig.complete(rig.last())
    rig.clock.advance(stats.LAG.total_seconds() + 1)
    settings = Settings(
        database_url=url,
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        imports=["tests.support.rig"],
    )
    system = System(settings)
    folded: list[int] = []
    reads_folded_rows = re.compile(r"\bFROM sagakit_metrics\b(?!_)", re.IGNORECASE)

    def fold_first(_: Any, __: Any, statement: str, *args: Any) -> None:
        # The sweeper folds while the scrape reads: here, just before it reads the folded
        # counters, after it has begun.
        if not folded and reads_folded_rows.search(statement):
            folded.append(stats.fold(rig.db, rig.clock()))

    with serve(create_app(system=system)) as base, httpx.Client(base_url=base, timeout=10) as http:
        sa.event.listen(system.process.db, "before_cursor_execute", fold_first)
        scrape = Scraper(http, system)
        samples = scrape()
        assert folded == [4], "the fold did not run during the scrape"
        assert started(samples)[("two",)] == 4
        assert finished(samples) == {("completed", "two"): 4}
        assert attempts(samples)[("action", "two", "succeeded", "b")] == 4
        assert started(scrape())[("two",)] == 4
        scrape.assert_monotonic()
