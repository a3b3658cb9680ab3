"""A private RabbitMQ node on ports of its own, so a test can restart it; never the shared one.

Its own node name, AMQP and distribution ports, database and log directories, no plugins
(the management plugin off); its queues (quorum queues, durable) survive a restart.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from .cluster import wait_for
from .redis_server import free_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


class RabbitServer:
    """Start, restart (messages in durable queues kept) and stop a RabbitMQ node."""

    def __init__(self, workdir: Path) -> None:
        if not SERVER.exists():
            raise RuntimeError(f"{SERVER} is not installed")
        self.workdir = workdir
        self.port = free_port()
        self.node = f"sagakit-test-{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        (workdir / "mnesia").mkdir(parents=True, exist_ok=True)
        (workdir / "log").mkdir(exist_ok=True)
        (workdir / "enabled_plugins").write_text("[].\n")
        (workdir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        self.env = {
            **os.environ,
            "RABBITMQ_CONF_ENV_FILE": "/dev/null",  # not the shared node's settings
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        with (self.workdir / "log" / "server.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [str(SERVER)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: self._answers() or self.proc.poll() is not None, 60, "RabbitMQ")
        if self.proc.poll() is not None:
            log = (self.workdir / "log" / "server.out").read_text()[-2000:]
            raise RuntimeError(f"RabbitMQ did not start:\n{log}")

    def stop(self) -> None:
        """Stop the node (its process group: the Erlang VM and epmd's helpers)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def restart(self) -> None:
        """Stop and start again: what was in its durable queues is still there."""
        self.stop()
        self.start()

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return bool(sock.recv(8))
        except OSError:
            return False
