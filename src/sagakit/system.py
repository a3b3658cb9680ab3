"""Build a running sagakit from Settings: store, Celery app, engine, embedded worker."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from .engine import Engine
from .events import RedisStreamPublisher
from .logs import configure_logging
from .registry import discover
from .runtime.app import SAGAKIT_QUEUE, bind_engine, engine_for, make_celery
from .runtime.dispatch import CeleryDispatcher
from .runtime.worker import EmbeddedWorker
from .settings import Settings, load_settings
from .store import SqlSagaStore, make_engine, upgrade_database

logger = logging.getLogger(__name__)


class System:
    """Everything one process needs, built once from Settings at the entry point."""

    def __init__(self, settings: Settings | None = None, *, migrate: bool = True) -> None:
        self.settings = settings or load_settings()
        self.sagas = discover([*self.settings.imports, "sagakit.bench"])
        self.celery = make_celery(
            self.settings.broker_url, visibility_timeout=self.settings.visibility_timeout
        )
        self._check_timeouts()
        if migrate:
            upgrade_database(self.settings.database_url)
        bind_engine(self.celery, self._build_engine)
        self._embedded: EmbeddedWorker | None = None

    @property
    def engine(self) -> Engine:
        """This process's engine."""
        engine = engine_for(self.celery)
        assert engine is not None
        return engine

    @property
    def queues(self) -> set[str]:
        """Every queue a registered saga uses, plus sagakit's own."""
        queues = {SAGAKIT_QUEUE}
        for saga in self.sagas.values():
            queues |= saga.queues
        return queues

    def _build_engine(self) -> Engine:
        events = None
        if self.settings.redis_url:
            events = RedisStreamPublisher.from_url(
                self.settings.redis_url, self.settings.events_stream, self.settings.events_maxlen
            )
        return Engine(
            SqlSagaStore(make_engine(self.settings.database_url)),
            self.sagas,
            CeleryDispatcher(self.celery),
            events=events,
            redrive_after=self.settings.redrive_after,
            timeout_grace=self.settings.timeout_grace,
            worker_lost_after=self.settings.worker_lost_after,
        )

    def _check_timeouts(self) -> None:
        if self.settings.embedded:
            return
        for saga in self.sagas.values():
            for step in saga.all_steps():
                if step.timeout and step.timeout + self.settings.timeout_grace >= (
                    self.settings.visibility_timeout
                ):
                    logger.warning(
                        "step timeout exceeds the broker visibility timeout",
                        extra={"step": step.name},
                    )

    def start_embedded(self) -> None:
        """Run an in-process worker and sweeper (embedded default, tests)."""
        if self._embedded is None:
            self._embedded = EmbeddedWorker(
                self.celery,
                lambda: self.engine,
                self.queues,
                concurrency=self.settings.worker_concurrency,
                sweep_interval=self.settings.sweep_interval,
            )
            self._embedded.start()

    def close(self) -> None:
        """Stop the embedded worker, if any."""
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def install_worker_logging(settings: Settings) -> None:
    """Make Celery hand its logging over to sagakit's saga-aware configuration."""

    def setup(**_: Any) -> None:
        configure_logging(settings.log_level, settings.log_format)

    signals.setup_logging.connect(setup, weak=False)
