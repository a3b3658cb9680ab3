"""What a bench measures beside time: SQL and Redis traffic, CPU per process.

With ``SAGAKIT_BENCH_TALLY=<dir>`` in its environment, every process of a bench (the bench
itself, a worker and its pool processes) counts the SQL transactions and statements and the
Redis commands, round trips and bytes it sends, and writes them to ``<dir>/<pid>.json`` a few
times a second. Counting costs a few increments per call; without the variable nothing is
installed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TALLY = "SAGAKIT_BENCH_TALLY"
KEYS = (
    "sql_transactions",
    "sql_statements",
    "redis_commands",
    "redis_round_trips",
    "redis_bytes",
)


class _Tally:
    """This process's counters, flushed to its file by a thread of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.values = dict.fromkeys(KEYS, 0)
        self._pid = 0

    def add(self, key: str, n: int = 1) -> None:
        if self._pid != os.getpid():
            # A new process (the first call, or a forked pool process whose copy of the
            # parent's counts belongs to the parent): counters and a file of its own.
            self._pid = os.getpid()
            self.values = dict.fromkeys(KEYS, 0)
            threading.Thread(target=self._flush_forever, daemon=True, name="bench-tally").start()
        self.values[key] += n

    def _flush_forever(self) -> None:
        pid = os.getpid()
        while pid == os.getpid():
            self.flush()
            time.sleep(0.1)

    def flush(self) -> None:
        target = self.directory / f"{os.getpid()}.json"
        partial = target.with_suffix(f".{threading.get_ident()}.part")
        partial.write_text(json.dumps({"at": time.time(), **self.values}))
        partial.replace(target)


_tally: _Tally | None = None


def install() -> None:
    """Count SQL and Redis traffic in this process, if a bench asked for it."""
    global _tally
    directory = os.environ.get(TALLY)
    if not directory or _tally is not None:
        return
    _tally = _Tally(Path(directory))
    _count_sql(_tally)
    _count_redis(_tally)


def flush() -> None:
    """Write this process's counters now (the bench does, before it reads them)."""
    if _tally is not None and _tally._pid == os.getpid():
        _tally.flush()


def _count_sql(tally: _Tally) -> None:
    import sqlalchemy as sa

    from ..store import log

    def statement(*_: Any) -> None:
        tally.add("sql_statements")

    def commit(*_: Any) -> None:
        tally.add("sql_transactions")

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", statement)
    sa.event.listen(sa.engine.Engine, "commit", commit)
    log.COUNTS.observers.append(tally.add)


def _count_redis(tally: _Tally) -> None:
    from redis import connection

    cls: Any = connection.AbstractConnection
    send_command, pack_commands = cls.send_command, cls.pack_commands
    send = cls.send_packed_command

    def counted_send_command(self: Any, *args: Any, **options: Any) -> Any:
        tally.add("redis_commands")
        return send_command(self, *args, **options)

    def counted_pack_commands(self: Any, commands: Any) -> Any:
        commands = list(commands)
        tally.add("redis_commands", len(commands))
        return pack_commands(self, commands)

    def counted_send(self: Any, command: Any, check_health: bool = True) -> Any:
        tally.add("redis_round_trips")
        size = len(command) if isinstance(command, bytes | str) else sum(map(len, command))
        tally.add("redis_bytes", size)
        return send(self, command, check_health)

    cls.send_command = counted_send_command
    cls.pack_commands = counted_pack_commands
    cls.send_packed_command = counted_send


@dataclass
class Reading:
    """Counters summed over a bench's processes at one instant."""

    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KEYS, 0))

    def __sub__(self, other: Reading) -> Reading:
        return Reading({k: self.values[k] - other.values[k] for k in KEYS})


def read(directory: Path, fresh_after: float, timeout: float = 3.0) -> Reading:
    """Sum every process's counters, once each has flushed after `fresh_after`."""
    flush()
    deadline = time.monotonic() + timeout
    while True:
        files = list(directory.glob("*.json"))
        data = []
        for path in files:
            try:
                data.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        stale = [d for d in data if d.get("at", 0) < fresh_after and _alive(d)]
        if not stale or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    total = Reading()
    for d in data:
        for key in KEYS:
            total.values[key] += int(d.get(key, 0))
    return total


def _alive(_: dict[str, Any]) -> bool:
    # A process that ended keeps its last file: counted, never waited for.
    return True


@dataclass
class CpuSample:
    """Seconds of CPU used so far, by role (bench, worker, redis, postgres)."""

    seconds: dict[str, float]

    def __sub__(self, other: CpuSample) -> CpuSample:
        roles = set(self.seconds) | set(other.seconds)
        return CpuSample({r: self.seconds.get(r, 0.0) - other.seconds.get(r, 0.0) for r in roles})


def cpu(roles: Mapping[str, Iterable[int]], *, trees: Iterable[str] = ("worker",)) -> CpuSample:
    """CPU seconds (user + system) of each role's processes (with their children, for the
    roles in `trees`: a worker's pool processes)."""
    import psutil

    out: dict[str, float] = {}
    with_children = set(trees)
    for role, pids in roles.items():
        total = 0.0
        for pid in pids:
            try:
                process = psutil.Process(pid)
                family = [process]
                if role in with_children:
                    family += process.children(recursive=True)
                for p in family:
                    times = p.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                continue
        out[role] = total
    return CpuSample(out)
