"""sagakit's prefork pool looks again for a pool process that is not reapable yet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sagakit.runtime.pool import REAP_INTERVAL, AsynPool, implementation


class Hub:
    """Records call_later and runs the callbacks when told."""

    def __init__(self) -> None:
        self.later: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.later.append((delay, callback))

    def run(self) -> None:
        while self.later:
            _, callback = self.later.pop(0)
            callback()


def pool_with(proc: object, reapable_after: int) -> tuple[Any, list[int]]:
    pool: Any = AsynPool.__new__(AsynPool)  # no processes: only the look-again logic
    pool._pool = [proc]
    looks: list[int] = []

    def maintain_pool() -> None:
        looks.append(len(looks) + 1)
        if len(looks) >= reapable_after:
            pool._pool.remove(proc)

    pool.maintain_pool = maintain_pool
    return pool, looks


def test_an_exited_process_is_looked_for_until_it_is_reaped() -> None:
    proc, hub = object(), Hub()
    pool, looks = pool_with(proc, reapable_after=3)
    pool._look_again(hub, proc, tries=10)
    assert hub.later[0][0] == REAP_INTERVAL
    hub.run()
    assert looks == [1, 2, 3]
    assert pool._pool == []


def test_the_looks_stop_after_their_budget() -> None:
    proc, hub = object(), Hub()
    pool, looks = pool_with(proc, reapable_after=100)
    pool._look_again(hub, proc, tries=4)
    hub.run()
    assert looks == [1, 2, 3, 4]  # then the pool's own 5 s timer finds it


def test_prefork_names_sagakits_pool_and_other_pools_stay_celerys() -> None:
    assert implementation("prefork") == "sagakit.runtime.pool:TaskPool"
    assert implementation("threads") == "threads"
