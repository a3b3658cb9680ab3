"""Build a running sagakit from Settings: saga log, Celery app, engine, sweeper, worker."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from celery import signals

from .engine import Engine
from .logs import configure_logging
from .outages import BROKER, unreachable
from .ports import Dispatcher
from .queries import Queries
from .registry import discover_all, newest, task_routes
from .runtime.adopted import install as install_adopted
from .runtime.app import SAGAKIT_QUEUE, bind_engine, bind_tracing, engine_for, make_celery
from .runtime.dispatch import BrokerWatch, dispatcher_for
from .runtime.probe import BrokerProbe
from .runtime.worker import EmbeddedWorker, holdings
from .settings import Settings, load_settings
from .store import SqlLog, make_db, upgrade_database
from .store.db import Pooled
from .store.prune import parse_age
from .streams.publisher import RedisStreamPublisher
from .sweeper import Identity, Sweeper

if TYPE_CHECKING:
    from .tracing.spans import Tracing

logger = logging.getLogger(__name__)


@dataclass
class _Process:
    """What one process (one prefork child) builds for itself: connections are not shared."""

    pid: int
    db: sa.Engine
    engine: Engine
    queries: Queries


class System:
    """Everything one process needs, built once from Settings at the entry point."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        migrate: bool = True,
        imports: Iterable[str] = (),
        routes: Iterable[Any] = (),
    ) -> None:
        self.settings = settings or load_settings()
        modules = [*self.settings.imports, *imports]
        self.celery = make_celery(
            self.settings.broker_url,
            visibility_timeout=self.settings.visibility_timeout,
            message_key=self.settings.message_key,
        )
        self.celery.conf.task_routes = [*routes, *task_routes(modules)]
        self.versions = [saga.routed(self._route) for saga in discover_all(modules)]
        """Every registered definition, each version of a saga type."""
        self.sagas = newest(self.versions)
        """The newest version of each saga type: what new starts take."""
        self.tracing = _tracing(self.settings)  # after the imports: a provider of theirs stays
        self._check_timeouts()
        if migrate:
            upgrade_database(self.settings.database_url)
        self._process: _Process | None = None
        install_adopted()  # existing tasks that are steps report to this worker's engine too
        bind_engine(
            self.celery,
            lambda: self.process.engine,
            record_patience=self.settings.record_patience,
        )
        bind_tracing(self.celery, self.tracing)
        self._embedded: EmbeddedWorker | None = None
        self._probe: BrokerProbe | None = None

    def _route(self, task_name: str) -> str | None:
        """The queue the app's ``task_routes`` send `task_name` to, if one does."""
        if not self.celery.conf.task_routes:
            return None
        router = self.celery.amqp.router
        route = router.lookup_route(task_name, (), {}, {}, None)
        if not route:
            return None
        queue = router.expand_destination(route).get("queue")
        name = getattr(queue, "name", queue)
        return str(name) if name else None

    @property
    def process(self) -> _Process:
        """This process's connections and engine (rebuilt after a fork)."""
        if self._process is None or self._process.pid != os.getpid():
            self._process = self._build()
        return self._process

    @property
    def engine(self) -> Engine:
        """This process's engine."""
        engine = engine_for(self.celery)
        assert engine is not None
        return engine

    @property
    def queries(self) -> Queries:
        """The read side."""
        return self.process.queries

    @property
    def queues(self) -> set[str]:
        """Every queue a registered saga's ``@saga_task`` steps use, plus sagakit's own:
        what sagakit's workers serve. A step whose action and compensation are existing
        tasks (`Step.args`) is served by its service's own worker (`sagakit.adopt`)."""
        queues = {SAGAKIT_QUEUE}
        for saga in self.versions:
            for step in saga.all_steps():
                plain = step.args is not None and (
                    step.compensation is None or step.compensation_args is not None
                )
                if not plain:
                    queues.add(step.queue_name)
        return queues

    def _build(self) -> _Process:
        settings = self.settings
        events = None
        if settings.redis_url:
            events = RedisStreamPublisher.from_url(
                settings.redis_url, settings.events_stream, settings.events_maxlen
            )
        db = make_db(settings.database_url)
        dispatcher: Dispatcher = dispatcher_for(
            self.celery,
            redis_url=settings.redis_url,
            stream=settings.events_stream,
            maxlen=settings.events_maxlen,
            time_limits=settings.time_limits,
            grace=settings.timeout_grace,
            key=settings.message_key.encode() if settings.message_key else None,
        )
        if self.tracing is not None:
            from .tracing.dispatch import TracingDispatcher, started_traces

            dispatcher = TracingDispatcher(dispatcher, self.tracing, started_traces(db))
        engine = Engine(
            SqlLog(make_db(settings.database_url, autocommit=True)),
            self.sagas,
            dispatcher,
            events=events,
            timeout_grace=settings.timeout_grace,
            versions=self.versions,
            tracing=self.tracing,
        )
        return _Process(os.getpid(), db, engine, Queries(Pooled(db)))

    def sweeper(self, name: str | None = None, *, born: datetime | None = None) -> Sweeper:
        """A sweeper for this process; with `name`, it beats as that worker."""
        settings = self.settings
        identity = None
        if name is not None:
            identity = Identity(name, os.getpid(), born or datetime.now(UTC))
        return Sweeper(
            self.engine,
            self.process.db,
            broker=BrokerWatch(self.celery),
            identity=identity,
            holdings=holdings,
            redrive_after=settings.redrive_after,
            worker_lost_after=settings.worker_lost_after,
            timeout_grace=settings.timeout_grace,
            retention=parse_age(settings.retention, "SAGAKIT_RETENTION")
            if settings.retention
            else None,
        )

    def check_broker(self) -> None:
        """Return once the broker answers; the embedded one always does.

        Raises:
            Unreachable: the broker did not answer within `BrokerProbe.timeout` (2 s).
        """
        if self.settings.embedded:
            return
        if self._probe is None:
            self._probe = BrokerProbe(self.celery)
        try:
            self._probe.check()
        except Exception as exc:
            outage = unreachable(exc, self.settings, kind=BROKER)
            if outage is None:
                raise
            raise outage from None

    def _check_timeouts(self) -> None:
        if self.settings.embedded:
            return
        for saga in self.versions:
            for step in saga.all_steps():
                limit = (step.timeout or 0) + 2 * self.settings.timeout_grace
                if step.timeout and limit >= self.settings.visibility_timeout:
                    logger.warning(
                        "step timeout exceeds the broker visibility timeout",
                        extra={"step": step.name},
                    )

    def start_embedded(self) -> None:
        """Run an in-process worker and sweeper (embedded default, tests)."""
        if self._embedded is not None:
            return
        holder: dict[str, Sweeper] = {}
        worker = EmbeddedWorker(
            self.celery,
            lambda: holder["sweeper"],
            sorted(self.queues),
            concurrency=self.settings.worker_concurrency,
            sweep_interval=self.settings.sweep_interval,
        )
        holder["sweeper"] = self.sweeper(worker.hostname)
        worker.start()
        self._embedded = worker

    def close(self) -> None:
        """Stop the embedded worker, if any, and drop the broker probe's connection."""
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tracing(settings: Settings) -> Tracing | None:
    """With ``SAGAKIT_TRACING``, the SDK and the instrumentations set up for this process
    (`tracing.setup`). Raises InvalidInput without the ``tracing`` extra."""
    if not settings.tracing:
        return None
    from .tracing.setup import install
    from .tracing.spans import Tracing

    install()
    return Tracing()


def install_worker_logging(settings: Settings) -> None:
    """Make Celery hand its logging over to sagakit's saga-aware configuration."""

    def setup(**_: Any) -> None:
        configure_logging(settings.log_level, settings.log_format)

    signals.setup_logging.connect(setup, weak=False)
