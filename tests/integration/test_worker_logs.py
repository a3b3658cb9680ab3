"""What a `sagakit worker` prints about sagas, read from its output as an operator reads it.

Every record about a saga's task names the saga, the step and the attempt, Celery's own
lines included; an expected failure is one warning line without a traceback; an unexpected
exception keeps its traceback, once. In JSON, every line is one object with those fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from sagakit.messages import parse_task_id
from tests.integration.conftest import client_system, worker_env
from tests.support.client import Client
from tests.support.cluster import Cluster, wait_for
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

TEXT_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>\S+) "
    r"\[(?P<saga_id>\S+) (?P<step>\S+) #(?P<attempt>\S+)\] (?P<message>.*)$"
)
TASK_ID = re.compile(r"\[(?P<task_id>[0-9a-f]+\.\d\d\.[\w-]+\.(?:fwd|comp)\.\d+)\]")
TRACEBACK = "Traceback (most recent call last)"
FINISHED = (" succeeded in ", " ignored", " raised unexpected: ")
"""What Celery's trace says once a task has run (its last line about the task)."""


@dataclass
class Record:
    """One log record of the worker, in either format."""

    level: str
    logger: str
    message: str
    saga_id: str | None
    step: str | None
    attempt: int | None
    traceback: str = ""
    lines: list[str] = field(default_factory=list)


def _field(value: str) -> str | None:
    return None if value == "-" else value


def parse_text(output: str) -> list[Record]:
    """Records of the text format; lines that start no record belong to the one before."""
    records: list[Record] = []
    for line in output.splitlines():
        match = TEXT_RECORD.match(line)
        if match is None:
            assert records, f"a line before any record: {line!r}"
            records[-1].lines.append(line)
            records[-1].traceback += line + "\n"
            continue
        attempt = _field(match["attempt"])
        records.append(
            Record(
                level=match["level"],
                logger=match["logger"],
                message=match["message"],
                saga_id=_field(match["saga_id"]),
                step=_field(match["step"]),
                attempt=None if attempt is None else int(attempt),
                lines=[line],
            )
        )
    return records


def parse_json(output: str) -> list[Record]:
    """Records of the JSON format: every line must be one JSON object."""
    records = []
    for line in output.splitlines():
        data = json.loads(line)  # a line that is not JSON fails the test here
        assert isinstance(data, dict), line
        records.append(
            Record(
                level=data["level"],
                logger=data["logger"],
                message=data["message"],
                saga_id=data.get("saga_id"),
                step=data.get("step"),
                attempt=data.get("attempt"),
                traceback=data.get("exc", ""),
                lines=[line],
            )
        )
    return records


PARSERS: dict[str, Callable[[str], list[Record]]] = {"text": parse_text, "json": parse_json}


class Worker:
    """One real `sagakit worker` and a reader of what it printed since a mark."""

    def __init__(self, cluster: Cluster, fmt: str) -> None:
        self.cluster = cluster
        self.fmt = fmt
        self.log = cluster.logdir / "w0.log"
        ready = self.log.read_bytes()
        # Celery's banner comes before "ready."; the records start after it.
        self.start = ready.index(b" ready.")
        self.start = ready.index(b"\n", self.start) + 1

    def mark(self) -> int:
        return len(self.log.read_bytes())

    def output(self, since: int) -> str:
        return self.log.read_bytes()[since:].decode()

    def records(self, since: int) -> list[Record]:
        return PARSERS[self.fmt](self.output(since))


@pytest.fixture(scope="module", params=["text", "json"])
def worker(
    request: pytest.FixtureRequest,
    pg_databases: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    fmt = str(request.param)
    workdir = tmp_path_factory.mktemp(f"logs-{fmt}")
    broker = RedisServer(workdir)  # a broker of its own: no other test's messages
    broker.start()
    env = {
        **worker_env(pg_databases(), broker.url),
        "SAGAKIT_LOG_FORMAT": fmt,
        # Celery's own time limits, so its soft-time-limit line is among those checked.
        "SAGAKIT_TIME_LIMITS": "true",
    }
    cluster = Cluster(env, workdir)
    try:
        cluster.start("-c", "1")
        yield Worker(cluster, fmt)
    finally:
        cluster.stop()
        broker.stop()


@pytest.fixture(scope="module")
def client(worker: Worker) -> Iterator[Client]:
    system = client_system(worker.cluster.env)
    yield Client(system)
    system.close()


def task_ids(client: Client, saga_id: str) -> list[str]:
    """Every message the saga log sent for the saga."""
    return [
        str(sent["task_id"])
        for h in client.history(saga_id)
        for sent in (h.detail or {}).get("scheduled", ())
    ]


def run(client: Client, worker: Worker, saga_type: str, faults: dict[str, list[str]]) -> str:
    """Run a saga to its end and wait until the worker has logged the end of every task."""
    saga_id = client.start(saga_type, {"faults": faults}).saga_id
    client.wait(saga_id, timeout=30)
    expected = task_ids(client, saga_id)

    def all_logged() -> bool:
        finished = {
            match["task_id"]
            for record in worker.records(worker.start)
            if any(word in record.message for word in FINISHED)
            and (match := TASK_ID.search(record.message))
        }
        return finished >= set(expected)

    wait_for(all_logged, 20, f"the worker to log the end of every task of {saga_id}")
    return saga_id


def about(records: list[Record], saga_id: str) -> list[Record]:
    """The records whose message or fields name the saga."""
    return [r for r in records if r.saga_id == saga_id or saga_id in r.message]


def test_every_record_about_a_saga_names_its_saga_step_and_attempt(
    client: Client, worker: Worker
) -> None:
    mark = worker.mark()
    flaky = run(client, worker, "linear", {"b": ["transient:1"]})
    slow = run(client, worker, "hasty", {"h": ["slow_first:3"]})  # attempt 1 overruns 1 s

    records = worker.records(mark)
    for saga_id in (flaky, slow):
        mine = about(records, saga_id)
        assert mine, worker.cluster.logs()
        for record in mine:
            assert record.saga_id == saga_id, record.lines
            assert record.step is not None and record.attempt is not None, record.lines
            named = TASK_ID.search(record.message)
            if named is not None:  # a line naming a task is about that task's attempt
                task = parse_task_id(named["task_id"])
                assert task is not None
                assert (record.step, record.attempt) == (task.step, task.attempt), record.lines
    flaky_lines = [r.message for r in about(records, flaky)]
    for what in (
        f"Task work.b[{flaky}.02.b.fwd.1] received",
        f"Task work.b[{flaky}.02.b.fwd.1] raised unexpected: ",
        f"Task work.b[{flaky}.02.b.fwd.2] received",
        f"Task work.b[{flaky}.02.b.fwd.2] succeeded in ",
    ):
        assert any(line.startswith(what) for line in flaky_lines), (what, flaky_lines)
    slow_lines = [r.message for r in about(records, slow)]
    # Celery's warning when the soft time limit fires names the task only in its text.
    assert any(
        line.startswith("Soft time limit") and f"[{slow}.01.h.fwd.1]" in line for line in slow_lines
    ), slow_lines
    assert client.get(slow).status == "completed"
    [timed_out] = [a for a in client.attempts(slow) if a.step == "h" and a.attempt == 1]
    assert timed_out.status == "timed_out"


@pytest.mark.parametrize(
    ("fault", "step", "error"),
    [
        pytest.param("fail", "b", "NonRetryableError: b refused", id="NonRetryableError"),
        pytest.param(
            "retryable:1", "b", "RetryableError: b busy on attempt 1", id="RetryableError"
        ),
    ],
)
def test_an_expected_failure_is_one_warning_line_without_a_traceback(
    client: Client, worker: Worker, fault: str, step: str, error: str
) -> None:
    mark = worker.mark()
    saga_id = run(client, worker, "linear", {step: [fault]})

    output = worker.output(mark)
    assert TRACEBACK not in output
    records = worker.records(mark)
    loud = [r for r in about(records, saga_id) if r.level in ("WARNING", "ERROR", "CRITICAL")]
    assert [(r.level, r.saga_id, r.step, r.attempt) for r in loud] == [
        ("WARNING", saga_id, step, 1)
    ], [r.lines for r in loud]
    [warning] = loud
    assert warning.message == f"step failed: {error}"
    assert len(warning.lines) == 1 and not warning.traceback
    assert not [r for r in records if r.level in ("ERROR", "CRITICAL")]
    expected = "compensated" if fault == "fail" else "completed"
    assert client.get(saga_id).status == expected


def test_an_unexpected_exception_keeps_its_traceback_once(client: Client, worker: Worker) -> None:
    mark = worker.mark()
    saga_id = run(client, worker, "linear", {"c": ["transient:1"]})

    output = worker.output(mark)
    assert output.count(TRACEBACK) == 1, output
    records = about(worker.records(mark), saga_id)
    loud = [r for r in records if r.level in ("WARNING", "ERROR", "CRITICAL")]
    assert [(r.level, r.logger, r.step, r.attempt) for r in loud] == [
        ("ERROR", "celery.app.trace", "c", 1)
    ], [r.lines for r in loud]
    [error] = loud
    assert error.message.startswith(f"Task work.c[{saga_id}.03.c.fwd.1] raised unexpected: ")
    assert TRACEBACK in error.traceback
    assert "RuntimeError: c flaked on attempt 1" in error.traceback
    assert client.get(saga_id).status == "completed"


def test_every_line_belongs_to_one_record_with_the_saga_fields(
    client: Client, worker: Worker
) -> None:
    mark = worker.mark()
    saga_id = run(client, worker, "linear", {"b": ["transient:1"], "d": ["fail"]})

    output = worker.output(mark)
    records = worker.records(mark)  # JSON: each line parses as one object, or this fails
    assert sum(len(r.lines) for r in records) == len(output.splitlines())
    for record in records:
        if len(record.lines) > 1:  # text: only a traceback spans lines, under its error
            assert record.level == "ERROR" and record.lines[1].startswith(TRACEBACK), record
    mine = about(records, saga_id)
    assert len(mine) > 10
    for record in mine:
        assert record.saga_id == saga_id, record.lines
        assert isinstance(record.step, str) and isinstance(record.attempt, int), record.lines
    [error] = [r for r in mine if r.level == "ERROR"]
    assert (error.step, error.attempt) == ("b", 1)
    assert TRACEBACK in error.traceback
    if worker.fmt == "json":
        for line in (line for r in mine for line in r.lines):
            fields = json.loads(line)
            assert {"at", "level", "logger", "message", "saga_id", "step", "attempt"} <= set(
                fields
            ), line
        assert len(error.lines) == 1  # the traceback is a field of the one line


def test_a_sweep_record_names_no_saga(client: Client, worker: Worker) -> None:
    mark = worker.mark()
    run(client, worker, "linear", {"a": ["transient:1"]})  # the sweeper sends the retry

    def sweeps() -> list[Record]:
        return [r for r in worker.records(mark) if r.message == "sweep"]

    wait_for(sweeps, 10, "the sweep that sent the retry to be logged")
    for record in sweeps():
        assert (record.saga_id, record.step, record.attempt) == (None, None, None), record.lines
    if worker.fmt == "json":
        # What the sweep did comes with it, as fields of its object.
        assert any(json.loads(r.lines[0]).get("sent", 0) >= 1 for r in sweeps()), [
            r.lines for r in sweeps()
        ]
