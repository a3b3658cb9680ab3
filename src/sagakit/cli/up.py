"""`sagakit up`: the whole topology as plain processes (what docker-compose runs).

Migrations, one worker per service queue (plus sagakit's own queue), the API and Flower.
Ctrl-C stops them all; a process that dies is reported and the whole stack stops with it:
nothing is restarted silently. The API and Flower ports are checked before anything starts,
so a second stack cannot mistake the first one's API for its own.

Flower gets its basic-auth credentials through its environment (``FLOWER_BASIC_AUTH``), never
on its command line, which every user of the machine can read; a generated password is kept
in a file only its owner can read, under the data directory, with Flower's state file.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from ..core.errors import SagaError

if TYPE_CHECKING:
    from ..settings import Settings
    from ..system import System

PASSWORD_FILE = "flower-password"
FLOWER_DB = "flower.db"


class StackError(SagaError):
    """The topology cannot start as configured."""


@dataclass
class Child:
    """One process of the stack."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    """Variables added to this process's environment only."""
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
    from ..runtime.app import SAGAKIT_QUEUE

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
                # With the app, Flower knows the step tasks (and the broker from the settings).
                _bin("celery"),
                "-A",
                "sagakit.celery_app",
                "flower",
                f"--address={settings.api_host}",
                f"--port={settings.flower_port}",
                # Tasks and workers seen survive a restart; saved every minute and on stop.
                "--persistent=True",
                f"--db={settings.data_dir / FLOWER_DB}",
                "--state-save-interval=60000",
            ],
            env={"FLOWER_BASIC_AUTH": f"{settings.flower_user}:{password}"},
        )
    )
    return children


def choreography_plan(settings: Settings) -> list[Child]:
    """The tracker and a participant per service of the choreographies in SAGAKIT_IMPORTS."""
    from ..choreography import discover

    if not settings.redis_url:
        raise StackError("sagakit up --choreographed needs SAGAKIT_REDIS_URL (its stream)")
    _, participants = discover(settings.imports)
    sagakit = _bin("sagakit")
    children = [Child("tracker", [sagakit, "tracker"])]
    for name in sorted(participants):
        children.append(Child(f"participant-{name}", [sagakit, "participant", name]))
    return children


def check_ports(settings: Settings) -> None:
    """Refuse to start when the API's or Flower's port cannot be listened on."""
    if settings.api_port == settings.flower_port:
        raise StackError(
            f"SAGAKIT_API_PORT and SAGAKIT_FLOWER_PORT are both {settings.api_port}: "
            "give Flower a port of its own"
        )
    for what, port, setting in (
        ("the API", settings.api_port, "SAGAKIT_API_PORT"),
        ("Flower", settings.flower_port, "SAGAKIT_FLOWER_PORT"),
    ):
        problem = _cannot_listen(settings.api_host, port)
        if problem is None:
            continue
        if problem.errno == errno.EADDRINUSE:
            raise StackError(
                f"port {port} on {settings.api_host} is already in use, so {what} cannot "
                f"listen there: stop what holds it, or set {setting} to a free port"
            )
        raise StackError(
            f"{what} cannot listen on {settings.api_host} port {port} ({problem.strerror}): "
            f"set {setting} to another port or SAGAKIT_API_HOST to an address of this machine"
        )


def _cannot_listen(host: str, port: int) -> OSError | None:
    """Why a server could not bind `host`:`port` now (binding as uvicorn and tornado do)."""
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return OSError(exc.errno, exc.strerror)
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            # SO_REUSEADDR as the servers set it: a port held only by connections closing
            # after an earlier stack is free, one with a listening socket is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return exc
    return None


def make_data_dir(settings: Settings) -> None:
    """Create SAGAKIT_DATA_DIR (mode 0700) if it does not exist."""
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StackError(
            f"cannot create the data directory {settings.data_dir} ({exc.strerror}): set "
            "SAGAKIT_DATA_DIR to a directory you can write"
        ) from None


def flower_password(settings: Settings) -> tuple[str, str]:
    """Flower's password, and where the user finds it (never the password itself).

    SAGAKIT_FLOWER_PASSWORD when set; otherwise the one in ``<data dir>/flower-password``,
    generated there (mode 0600) on first use, so it stays the same from one run to the next.
    """
    if ":" in settings.flower_user or "," in settings.flower_user:
        raise StackError("SAGAKIT_FLOWER_USER must not contain ':' or ','")
    if settings.flower_password:
        if "," in settings.flower_password:
            raise StackError(
                "SAGAKIT_FLOWER_PASSWORD must not contain ',' (Flower splits its credentials "
                "on commas)"
            )
        return settings.flower_password, "from SAGAKIT_FLOWER_PASSWORD"
    path = settings.data_dir / PASSWORD_FILE
    try:
        return _stored_secret(path), f"in {path}"
    except OSError as exc:
        raise StackError(
            f"cannot keep Flower's password in {path} ({exc.strerror}): set SAGAKIT_DATA_DIR "
            "to a writable directory, or SAGAKIT_FLOWER_PASSWORD"
        ) from None


def _stored_secret(path: Path) -> str:
    """The secret in `path`, made (readable by its owner only) if there is none yet."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise StackError(
                f"{path} is open to other users (mode {mode:o}): chmod 600 it, or delete "
                "it to have a new password generated"
            ) from None
        secret = path.read_text().strip()
        if secret:
            return secret
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    import secrets

    secret = secrets.token_urlsafe(18)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


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


def _check_alive(children: list[Child]) -> None:
    dead = [c for c in children if c.proc is not None and c.proc.poll() is not None]
    if dead:
        codes = ", ".join(
            f"{c.name} exited with {c.proc.returncode}" for c in dead if c.proc is not None
        )
        raise StackError(f"{codes}; stopping the stack (nothing is restarted)")


def _healthy(url: str, token: str | None = None) -> bool:
    """Whether `url` answers 200 (with the API token, which /healthz needs when protected)."""
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def require_extra(command: str, modules: tuple[str, ...]) -> None:
    """Refuse, in one line, to run `command` without the ``api`` extra it needs."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise StackError(
            f"{command} needs the api extra ({', '.join(missing)} not installed): "
            "pip install 'sagakit[api]' (make install in a checkout)"
        )


def register(app: typer.Typer) -> None:
    """Add `api` and `up` to `app`."""

    @app.command()
    def api(
        host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
        port: Annotated[int | None, typer.Option(min=1, max=65535)] = None,
    ) -> None:
        """Serve the HTTP API (OpenAPI docs at /docs)."""
        require_extra("sagakit api", ("fastapi", "uvicorn"))
        import uvicorn

        from ..api import create_app
        from ..logs import configure_logging
        from ..settings import load_settings

        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        # Built here rather than by uvicorn's factory, so that a database unreachable at
        # start is one line and exit status 3, not uvicorn's traceback.
        application = create_app(settings)
        uvicorn.run(
            application,
            host=host or settings.api_host,
            port=port or settings.api_port,
            log_config=None,
            access_log=False,
        )

    @app.command()
    def up(
        concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 2,
        ready_timeout: Annotated[
            float, typer.Option(help="Seconds to wait for the API and Flower.")
        ] = 60,
        choreographed: Annotated[
            bool,
            typer.Option(
                help="Also run the choreography's tracker and one participant per service."
            ),
        ] = False,
    ) -> None:
        """Run migrations, a worker per queue, the API and Flower; Ctrl-C stops them all."""
        require_extra("sagakit up", ("fastapi", "uvicorn", "flower"))
        from ..settings import load_settings
        from ..store import upgrade_database
        from ..system import System
        from .sagas import check_broker

        settings = load_settings()
        if settings.embedded or settings.database_url.startswith("sqlite"):
            raise StackError(
                "sagakit up runs the full topology on PostgreSQL and Redis: set "
                "SAGAKIT_DATABASE_URL=postgresql://USER@HOST/DB and "
                "SAGAKIT_BROKER_URL=redis://HOST:6379/0 (and SAGAKIT_REDIS_URL for live "
                "events). Without services, `sagakit api` serves the embedded default."
            )
        check_ports(settings)
        make_data_dir(settings)
        password, where = flower_password(settings)
        upgrade_database(settings.database_url)
        system = System(settings, migrate=False)
        check_broker(system)
        children = plan(settings, system, concurrency, password)
        if choreographed:
            children[-2:-2] = choreography_plan(settings)
        stopping = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())
        try:
            for child in children:
                child.proc = subprocess.Popen(
                    child.argv,
                    env={**os.environ, **child.env},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                assert child.proc.stdout is not None
                threading.Thread(
                    target=_pump, args=(child.name, child.proc.stdout), daemon=True
                ).start()
            base = f"http://{settings.api_host}:{settings.api_port}"
            flower = f"http://{settings.api_host}:{settings.flower_port}"
            deadline = time.monotonic() + ready_timeout
            # SAGAKIT_API_PROTECT_SYSTEM puts /healthz behind the token: send it when set.
            checks = (
                ("the API", f"{base}/healthz", settings.api_token),
                ("Flower", f"{flower}/healthcheck", None),
            )
            for what, url, token in checks:
                while not _healthy(url, token) and not stopping.is_set():
                    _check_alive(children)
                    if time.monotonic() > deadline:
                        raise StackError(f"{what} did not become healthy within {ready_timeout}s")
                    time.sleep(0.2)
            typer.echo(
                f"\nsagakit is up:\n  API docs   {base}/docs\n  API        {base}/api/sagas\n"
                f"  metrics    {base}/metrics\n"
                f"  Flower     {flower} (user {settings.flower_user!r}, password {where})\n"
                f"  workers    {', '.join(c.name for c in children if c.name.startswith('w'))}"
                "\nCtrl-C stops everything.",
                err=False,
            )
            while not stopping.wait(0.5):
                _check_alive(children)
        finally:
            typer.echo("stopping sagakit ...")
            _stop(children)
            typer.echo("stopped")
