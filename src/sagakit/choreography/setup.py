"""A choreography built from Settings: its bus, scripts, participants, tracker, starts."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from ..core.errors import InvalidInput, UnknownSagaType
from ..core.inputs import check_saga_id, validated_input
from ..engine import Engine, new_saga_id
from ..settings import Settings
from ..store import SqlLog, make_db, upgrade_database
from ..streams.publisher import RedisStreamPublisher
from .bus import Bus
from .events import SagaEvent
from .participant import Participant, Runner
from .script import Script
from .tracker import Tracker, start_saga


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

    def __init__(self, settings: Settings, *, imports: Iterable[str] = ()) -> None:
        if not settings.redis_url:
            raise InvalidInput(
                "SAGAKIT_REDIS_URL", "choreographed sagas need Redis: set SAGAKIT_REDIS_URL"
            )
        self.settings = settings
        self.scripts, self.participants = discover([*settings.imports, *imports])
        self.bus = Bus.from_url(
            settings.redis_url,
            settings.choreography_stream,
            claim_idle=settings.choreography_claim_idle,
            max_deliveries=settings.choreography_max_deliveries,
            block=settings.choreography_block,
        )
        self._engine: Engine | None = None

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
