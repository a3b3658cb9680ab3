"""An engine, its read side and a sweeper on one saga log, with in-memory ports and a clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from sagakit import Engine, Parallel, RetryPolicy, Saga, Step
from sagakit.messages import OutboxMessage, unseal
from sagakit.queries import Queries
from sagakit.store import SqlLog, make_db, upgrade
from sagakit.store.db import Pooled
from sagakit.store.log import Snapshot
from sagakit.store.recovery import Held
from sagakit.sweeper import Identity, Sweeper
from tests.support.recording import Broker, RecordingDispatcher, RecordingPublisher


class Order(BaseModel):
    quantity: int = Field(ge=1)
    sku: str


RETRY = RetryPolicy(max_attempts=2, initial_interval=1.0, jitter=0.0)
TWO = Saga(
    "two",
    [
        Step("a", "svc.a", "svc.undo_a", timeout=10.0, retry=RETRY),
        Step("b", "svc.b", "svc.undo_b", timeout=10.0, retry=RETRY),
    ],
    timeout=60.0,
)
TYPED = Saga("typed", [Step("a", "svc.a", "svc.undo_a")], input_model=Order)
FAN = Saga(
    "fan",
    [
        Step("a", "svc.a", "svc.undo_a"),
        Step("each", "svc.each", "svc.undo_each", for_each="a.items"),
        Parallel(
            "g",
            [
                Step("x", "svc.x", "svc.undo_x", retry=RetryPolicy(max_attempts=1)),
                Step("y", "svc.y", "svc.undo_y"),
            ],
        ),
    ],
)
ONCE = RetryPolicy(max_attempts=1)
UNDO = Saga(
    "undo",
    [Step(name, f"svc.{name}", f"svc.undo_{name}", retry=ONCE) for name in ("a", "b", "c", "d")],
)
SAGAS = {"two": TWO, "typed": TYPED, "fan": FAN, "undo": UNDO}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Rig:
    """An engine, its read side and one sweeper on one SQLite saga log."""

    def __init__(
        self, url: str, sagas: dict[str, Saga] | None = None, versions: tuple[Saga, ...] = ()
    ) -> None:
        self.db = make_db(url)
        upgrade(self.db)
        self.clock = Clock()
        self.dispatcher = RecordingDispatcher()
        self.publisher = RecordingPublisher()
        self.broker = Broker()
        self.engine = Engine(
            SqlLog(make_db(url, autocommit=True)),
            sagas or SAGAS,
            self.dispatcher,
            events=self.publisher,
            clock=self.clock,
            timeout_grace=1.0,
            versions=versions,
        )
        self.queries = Queries(Pooled(self.db))
        self.held: list[Held] = []
        self.sweeper = self.sweeper_for("w1@test", pid=100)

    def sweeper_for(self, name: str, pid: int) -> Sweeper:
        return Sweeper(
            self.engine,
            self.db,
            broker=self.broker,
            identity=Identity(name, pid, self.clock()),
            holdings=lambda: tuple(self.held),
            redrive_after=30.0,
            worker_lost_after=30.0,
            timeout_grace=1.0,
        )

    def last(self) -> OutboxMessage:
        return self.dispatcher.sent[-1]

    def carried(self, message: OutboxMessage) -> Snapshot | None:
        """The saga state `message` carries, unsealed as a worker does, if any."""
        kw = message.kwargs
        key = self.engine.log.state_key()
        state = unseal(key, message.task_id, kw, message.state)
        if state is None:
            return None
        return Snapshot.carried(state, kw["saga_id"], kw["step"], kw["direction"], kw["attempt"])

    def check(self, message: OutboxMessage) -> Snapshot | None:
        """What a worker decides `message`'s outcome on: the state it carries, else the
        saga read now."""
        kw = message.kwargs
        saga_id, step, direction, attempt = (
            kw["saga_id"],
            kw["step"],
            kw["direction"],
            kw["attempt"],
        )
        carried = self.carried(message)
        if carried is not None:
            return carried
        found = self.engine.log.check(saga_id, step, direction, attempt)
        return None if found is None else found.snapshot

    def complete(
        self, message: OutboxMessage, output: object = None, snapshot: Snapshot | None = None
    ) -> None:
        """Finish `message` as a worker does: from its read of the saga (made now unless
        given)."""
        snapshot = snapshot or self.check(message)
        self.engine.finish(
            message.kwargs, message.task_id, output=output, worker="w1@test", snapshot=snapshot
        )

    def fail(
        self, message: OutboxMessage, error: str = "boom", snapshot: Snapshot | None = None
    ) -> None:
        snapshot = snapshot or self.check(message)
        self.engine.finish(
            message.kwargs,
            message.task_id,
            error=RuntimeError(error),
            worker="w1@test",
            snapshot=snapshot,
        )

    def running(self, message: OutboxMessage) -> None:
        """The worker reports it runs `message` since now."""
        self.held = [Held(message.task_id, self.clock().timestamp(), message.timeout)]
