"""`sagakit up`: the whole topology as plain processes (what docker-compose runs).

Migrations, one worker per service queue (plus sagakit's own queue), the API and Flower.
Ctrl-C stops them all; a process that dies is reported and the whole stack stops with it:
nothing is restarted silently.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated

import typer

from ..core.errors import SagaError
from ..runtime.app import SAGAKIT_QUEUE
from ..settings import Settings, load_settings
from ..store import upgrade_database
from ..system import System


class StackError(SagaError):
    """The topology cannot start as configured."""


@dataclass
class Child:
    """One process of the stack."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None


def _bin(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def _pump(name: str, stream: IO[bytes]) -> None:
    width = 12
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"{name:<{width}}| {raw.decode(errors='replace')}")
        sys.stdout.flush()


def plan(settings: Settings, system: System, concurrency: int, password: str) -> list[Child]:
    """The processes to run, in start order."""
    sagakit = _bin("sagakit")
    queues = sorted(system.queues - {SAGAKIT_QUEUE})
    children = [
        Child(
            f"worker-{queue}",
            # -E: Flower watches this stack, so every task shows there from the first.
            [
                sagakit,
                "worker",
                "-E",
                "-Q",
                queue,
                "-c",
                str(concurrency),
                "--hostname",
                f"{queue}@%h",
            ],
        )
        for queue in queues
    ]
    children.append(
        Child(
            "worker-sagakit",
            [sagakit, "worker", "-E", "-Q", SAGAKIT_QUEUE, "-c", "1", "--hostname", "sagakit@%h"],
        )
    )
    children.append(
        Child(
            "api", [sagakit, "api", "--host", settings.api_host, "--port", str(settings.api_port)]
        )
    )
    children.append(
        Child(
            "flower",
            [
                _bin("celery"),
                f"--broker={settings.broker_url}",
                "flower",
                f"--address={settings.api_host}",
                f"--port={settings.flower_port}",
                f"--basic-auth={settings.flower_user}:{password}",
            ],
        )
    )
    return children


def _stop(children: list[Child], timeout: float = 20.0) -> None:
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            os.killpg(child.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait(5)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def register(app: typer.Typer) -> None:
    """Add `api` and `up` to `app`."""

    @app.command()
    def api(
        host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
        port: Annotated[int | None, typer.Option(min=1, max=65535)] = None,
    ) -> None:
        """Serve the HTTP API (OpenAPI docs at /docs)."""
        import uvicorn

        from ..logs import configure_logging

        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        uvicorn.run(
            "sagakit.api:create_app",
            factory=True,
            host=host or settings.api_host,
            port=port or settings.api_port,
            log_config=None,
            access_log=False,
        )

    @app.command()
    def up(
        concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 2,
        ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for the API.")] = 60,
    ) -> None:
        """Run migrations, a worker per queue, the API and Flower; Ctrl-C stops them all."""
        settings = load_settings()
        if settings.embedded or settings.database_url.startswith("sqlite"):
            raise StackError(
                "sagakit up runs the full topology on PostgreSQL and Redis: set "
                "SAGAKIT_DATABASE_URL=postgresql://USER@HOST/DB and "
                "SAGAKIT_BROKER_URL=redis://HOST:6379/0 (and SAGAKIT_REDIS_URL for live "
                "events). Without services, `sagakit api` serves the embedded default."
            )
        upgrade_database(settings.database_url)
        system = System(settings, migrate=False)
        password = settings.flower_password or secrets.token_urlsafe(12)
        children = plan(settings, system, concurrency, password)
        stopping = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())
        env = {**os.environ, "SAGAKIT_FLOWER_PASSWORD": password}
        try:
            for child in children:
                child.proc = subprocess.Popen(
                    child.argv,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                assert child.proc.stdout is not None
                threading.Thread(
                    target=_pump, args=(child.name, child.proc.stdout), daemon=True
                ).start()
            base = f"http://{settings.api_host}:{settings.api_port}"
            deadline = time.monotonic() + ready_timeout
            while not _healthy(f"{base}/healthz") and not stopping.is_set():
                if time.monotonic() > deadline:
                    raise StackError(f"the API did not become healthy within {ready_timeout}s")
                time.sleep(0.2)
            typer.echo(
                f"\nsagakit is up:\n  API docs   {base}/docs\n  API        {base}/api/sagas\n"
                f"  metrics    {base}/metrics\n"
                f"  Flower     http://{settings.api_host}:{settings.flower_port} "
                f"(user {settings.flower_user!r}"
                + ("" if settings.flower_password else f", password {password!r}")
                + ")\n"
                f"  workers    {', '.join(c.name for c in children if c.name.startswith('w'))}"
                "\nCtrl-C stops everything.",
                err=False,
            )
            while not stopping.wait(0.5):
                dead = [c for c in children if c.proc is not None and c.proc.poll() is not None]
                if dead:
                    codes = ", ".join(
                        f"{c.name} exited with {c.proc.returncode}"
                        for c in dead
                        if c.proc is not None
                    )
                    raise StackError(f"{codes}; stopping the stack (nothing is restarted)")
        finally:
            typer.echo("stopping sagakit ...")
            _stop(children)
            typer.echo("stopped")
