"""Celery's prefork pool, with a killed pool process noticed at once.

Celery's asynchronous prefork pool learns that a pool process exited when the process's
sentinel pipe closes, and looks for exited processes then. The kernel closes a dying
process's files a moment before the process can be reaped, so that look often finds it
still alive, and the next look comes from the pool's maintenance timer, 5 seconds later:
the message of a step whose pool process was killed (OOM killer, segfault, ``kill -9``) was
redelivered after 0.3 to 5 seconds. Here the look is repeated every `REAP_INTERVAL` until
the process is reaped, so the redelivery is always at once.

`PREFORK` is what ``sagakit worker -P prefork`` (the default) runs.
"""

from __future__ import annotations

from typing import Any

from celery.concurrency import asynpool, prefork

PREFORK = "sagakit.runtime.pool:TaskPool"
"""The pool class ``sagakit worker`` runs for ``-P prefork``."""

REAP_INTERVAL = 0.02
"""Seconds between looks at a pool process whose sentinel closed but is not reaped yet."""

REAP_TRIES = 250
"""Looks before giving up on it (then the pool's own timer finds it): 5 seconds."""


class AsynPool(asynpool.AsynPool):  # type: ignore[misc]
    """Celery's AsynPool; an exited pool process is reaped as soon as it can be."""

    def _event_process_exit(self, hub: Any, proc: Any) -> None:
        super()._event_process_exit(hub, proc)
        if proc in self._pool:  # its files are closed, but it is not reapable yet
            self._look_again(hub, proc, REAP_TRIES)

    def _look_again(self, hub: Any, proc: Any, tries: int) -> None:
        def look() -> None:
            if proc not in self._pool:
                return
            self.maintain_pool()
            if proc in self._pool and tries > 1:
                self._look_again(hub, proc, tries - 1)

        hub.call_later(REAP_INTERVAL, look)


class TaskPool(prefork.TaskPool):  # type: ignore[misc]
    """Celery's prefork TaskPool around `AsynPool`."""

    Pool = AsynPool


def implementation(pool: str) -> str:
    """The pool class to give Celery for the pool named `pool` on the command line."""
    return PREFORK if pool == "prefork" else pool
