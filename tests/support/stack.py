"""A whole sagakit stack as processes, as `sagakit up` runs it: migrations, a worker (one
process serving every queue, sending task events), the API and Flower with basic auth."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.cluster import ROOT, SAGAKIT, stop_all, wait_for
from tests.support.redis_server import free_port

CELERY = str(Path(SAGAKIT).with_name("celery"))


@dataclass
class Stack:
    """The running processes, where they listen and their credentials."""

    api: str
    flower: str
    token: str
    flower_auth: tuple[str, str]
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.api, headers=headers, timeout=10)

    def stop(self) -> None:
        stop_all(self.procs)

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in self.logs.glob("*.log"))


def _ok(url: str, **options: object) -> bool:
    try:
        return httpx.get(url, timeout=2, **options).status_code == 200  # type: ignore[arg-type]
    except httpx.HTTPError:
        return False


def start_stack(env: dict[str, str], queues: list[str], logs: Path) -> Stack:
    """Migrate, then start the worker, the API and Flower together; return once all answer."""
    token = env["SAGAKIT_API_TOKEN"]
    password = env["SAGAKIT_FLOWER_PASSWORD"]
    api_port, flower_port = free_port(), free_port()
    flower = f"http://127.0.0.1:{flower_port}"
    env = {
        **os.environ,
        **env,
        "SAGAKIT_API_PORT": str(api_port),
        "SAGAKIT_FLOWER_PORT": str(flower_port),
        "SAGAKIT_FLOWER_URL": flower,
    }
    subprocess.run([SAGAKIT, "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
    stack = Stack(f"http://127.0.0.1:{api_port}", flower, token, ("admin", password), logs)
    commands = {
        "worker": [SAGAKIT, "worker", "-E", "-Q", ",".join(queues), "-c", "3", "-n", "w@%h"],
        "api": [SAGAKIT, "api", "--host", "127.0.0.1", "--port", str(api_port)],
        "flower": [
            CELERY,
            "-A",
            "sagakit.celery_app",
            "flower",
            "--address=127.0.0.1",
            f"--port={flower_port}",
        ],
    }
    for name, argv in commands.items():
        with (logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**env, "FLOWER_BASIC_AUTH": f"admin:{password}"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stack.procs.append(proc)
    try:
        wait_for(
            lambda: b" ready." in (logs / "worker.log").read_bytes() or _died(stack),
            90,
            "the worker",
        )
        wait_for(lambda: _ok(f"{stack.api}/healthz") or _died(stack), 90, "the API")
        wait_for(lambda: _ok(f"{flower}/healthcheck") or _died(stack), 90, "Flower")
        assert not _died(stack), stack.tail()
    except BaseException:
        stack.stop()
        raise
    return stack


def _died(stack: Stack) -> bool:
    return any(proc.poll() is not None for proc in stack.procs)
