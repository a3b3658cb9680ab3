"""A choreography built from Settings: its bus, scripts, participants, tracker, starts."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..core.errors import InvalidInput, UnknownSagaType
from ..core.inputs import check_saga_id, validated_input
from ..engine import Engine, new_saga_id
from ..settings import Settings
from ..store import SqlLog, make_db, upgrade_database
from ..streams.publisher import RedisStreamPublisher
from .bus import Bus
from .events import SagaEvent
from .participant import Participant, Runner, guarded
from .script import Script
from .tracker import Tracker, start_saga


def _loop(step: Callable[[], int], stop: threading.Event) -> None:
    while not stop.is_set():
        if not guarded(step):
            stop.wait(1.0)
        else:
            stop.wait(0.01)  # the embedded stream does not block reads: let the others in


def discover(modules: Iterable[str]) -> tuple[dict[str, Script], dict[str, Participant]]:
    """The scripts (by saga type) and participants (by service) the modules hold."""
    scripts: dict[str, Script] = {}
    participants: dict[str, Participant] = {}
    for name in modules:
        module = importlib.import_module(name)
        for value in list(vars(module).values()):
            for item in value if isinstance(value, list | tuple) else [value]:
                if isinstance(item, Script):
                    scripts[item.name] = item
                elif isinstance(item, Participant):
                    participants[item.service] = item
    return scripts, participants


class Choreography:
    """Everything a process needs to take part in, track or start choreographed sagas."""

    def __init__(
        self, settings: Settings, *, imports: Iterable[str] = (), embedded: bool = False
    ) -> None:
        """`embedded`: without ``SAGAKIT_REDIS_URL``, an in-process stream (fakeredis) that
        only this process's threads share (`threads`): the demo's, never a deployment's."""
        options: dict[str, Any] = {
            "claim_idle": settings.choreography_claim_idle,
            "max_deliveries": settings.choreography_max_deliveries,
            "block": settings.choreography_block,
        }
        if settings.redis_url:
            self.bus = Bus.from_url(settings.redis_url, settings.choreography_stream, **options)
        elif embedded:
            import fakeredis

            options["block"] = 0.0  # fakeredis serves one command at a time: poll
            self.bus = Bus(fakeredis.FakeRedis(), settings.choreography_stream, **options)
        else:
            raise InvalidInput(
                "SAGAKIT_REDIS_URL", "choreographed sagas need Redis: set SAGAKIT_REDIS_URL"
            )
        self.settings = settings
        self.scripts, self.participants = discover([*settings.imports, *imports])
        self._engine: Engine | None = None

    @contextmanager
    def threads(self) -> Iterator[None]:
        """Run the tracker and one runner of every participant as threads of this process
        while the block runs (`sagakit demo`)."""
        stop = threading.Event()
        loops: list[Callable[[], int]] = [self.tracker("tracker").step]
        loops += [self.runner(name, f"{name}-thread").step for name in sorted(self.participants)]
        threads = [threading.Thread(target=_loop, args=(step, stop), daemon=True) for step in loops]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)

    def script(self, saga_type: str) -> Script:
        """The script of `saga_type`, or of the choreography whose twin it is."""
        for script in self.scripts.values():
            if saga_type in (script.name, script.twin):
                return script
        raise UnknownSagaType(saga_type, list(self.scripts))

    @property
    def engine(self) -> Engine:
        """An engine over the saga log that knows the scripts' sagas (and sends nothing)."""
        if self._engine is None:
            settings = self.settings
            events = None
            if settings.redis_url:
                events = RedisStreamPublisher.from_url(
                    settings.redis_url, settings.events_stream, settings.events_maxlen
                )
            upgrade_database(settings.database_url)
            sagas = {s.name: s.saga() for s in self.scripts.values()}
            log = SqlLog(make_db(settings.database_url, autocommit=True))
            self._engine = Engine(log, sagas, None, events=events)
        return self._engine

    def tracker(self, consumer: str = "tracker") -> Tracker:
        """The tracker, consuming as `consumer`."""
        db = make_db(self.settings.database_url)
        return Tracker(
            self.bus,
            self.engine,
            db,
            self.scripts,
            consumer=consumer,
            timeout=self.settings.choreography_timeout,
        )

    def runner(self, service: str, consumer: str | None = None) -> Runner:
        """A runner of `service`'s participant. Raises InvalidInput for an unknown one."""
        try:
            participant = self.participants[service]
        except KeyError:
            known = ", ".join(sorted(self.participants)) or "none"
            raise InvalidInput("SERVICE", f"no participant {service!r} (known: {known})") from None
        return Runner(participant, self.bus, consumer=consumer)

    def start(self, saga_type: str, input: Mapping[str, Any], *, saga_id: str | None = None) -> str:
        """Start a choreographed saga: record it in the saga log, then publish its start
        event. Returns its id.

        If the publish fails the saga is in the log already: the tracker times out its
        first step and it ends compensated.
        """
        script = self.script(saga_type)
        data = validated_input(dict(input), script.input_model)
        saga_id = check_saga_id(saga_id) if saga_id is not None else new_saga_id()
        event = SagaEvent(script.starts, saga_id, script.name, {"input": dict(data)})
        start_saga(self.engine, self.engine.log.db, script, event)
        self.bus.publish([event])
        return saga_id
