"""`sagakit ping`: does a worker answer through the broker? (The workers' healthcheck.)

Celery's ``ping`` control command goes to one node name through the broker and is answered
by the worker's consumer, the part that takes tasks off the queues: a worker that has lost
the broker, is stuck or is stopped does not answer. Exit status 0 means it answered, 1 that
it did not (docker reserves 2), with one line saying which.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

UNHEALTHY = 1


def _fail(message: str) -> typer.Exit:
    typer.echo(f"unhealthy: {message}", err=True)
    return typer.Exit(UNHEALTHY)


def register(app: typer.Typer) -> None:
    """Add `ping` to `app`."""

    @app.command()
    def ping(
        hostname: Annotated[
            str | None,
            typer.Option(
                "--hostname",
                "-n",
                help="The worker's node name, as given to `sagakit worker -n` "
                "(%h, %n and %d expand; default celery@%h).",
            ),
        ] = None,
        timeout: Annotated[
            float, typer.Option(min=0.1, help="Seconds to wait for the broker and the reply.")
        ] = 5.0,
    ) -> None:
        """Ask one worker for a pong through the broker: exit 0 if it answers, 1 if not."""
        from celery.utils.nodenames import default_nodename, host_format
        from kombu.utils.url import maybe_sanitize_url
        from pydantic import ValidationError
        from pydantic_settings import SettingsError

        from ..runtime.app import make_celery
        from ..settings import load_settings

        node = host_format(default_nodename(hostname))
        try:
            settings = load_settings()
        except (SettingsError, ValidationError) as exc:
            first = str(exc).strip().splitlines()
            raise _fail(f"settings: {' '.join(first[:3])}") from None
        if settings.embedded:
            raise _fail(
                "SAGAKIT_BROKER_URL is not set: an embedded worker has no broker to be "
                "pinged through"
            )
        broker = maybe_sanitize_url(settings.broker_url)
        celery = make_celery(settings.broker_url)
        started = time.monotonic()
        try:
            with celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=timeout)
                replies = celery.control.ping(destination=[node], timeout=timeout, connection=conn)
        except Exception as exc:  # kombu raises the transport's own errors
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _fail(f"cannot reach the broker {broker}: {reason}") from None
        answer = next((reply[node] for reply in replies or [] if node in reply), None)
        if answer is None:
            raise _fail(
                f"{node} did not answer within {timeout:g}s through {broker} "
                "(not running, not consuming, or on another broker)"
            )
        elapsed = time.monotonic() - started
        typer.echo(f"{node}: {answer.get('ok', answer)} in {elapsed:.2f}s")
