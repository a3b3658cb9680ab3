"""Settings, read once from the environment at the entry points and passed down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .environ import DEFAULT_DATABASE_URL, database_url

EMBEDDED_BROKER = "memory://localhost/"


def default_data_dir() -> Path:
    """``$XDG_STATE_HOME/sagakit``, or ``~/.local/state/sagakit``: per user, outside the project."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "sagakit"


class Settings(BaseSettings):
    """Every knob, from ``SAGAKIT_*`` environment variables.

    No ``.env`` file is read: the one docker-compose uses holds container host names, and
    reading it from the working directory would leak them into local commands.
    """

    model_config = SettingsConfigDict(env_prefix="SAGAKIT_", extra="ignore", frozen=True)

    database_url: str = DEFAULT_DATABASE_URL
    """Saga log. SQLite file in the working directory by default; PostgreSQL for real."""
    broker_url: str = EMBEDDED_BROKER
    """Celery broker. The default is an in-process broker with an embedded worker."""
    redis_url: str | None = None
    """Redis for the saga event stream (optional)."""
    api_token: str | None = None
    """Bearer token required by every /api route when set (the only one that allows writes)."""
    api_read_token: str | None = None
    """Bearer token that allows the /api routes' reads (GET) but no writes; needs api_token."""
    api_protect_system: bool = False
    """Require a token (either one) on /healthz and /metrics too, when api_token is set."""
    message_key: str | None = None
    """Shared key that signs every step message (and the outcomes workers without the saga
    log report back). Set it in every process of a deployment that has workers without the
    saga log: those run only messages signed with it. Workers bound to the log do not need
    it; they run only attempts the log scheduled."""
    imports: Annotated[list[str], NoDecode] = ["sagakit_examples.slam"]
    """Modules holding saga definitions and step tasks (comma separated)."""
    events_stream: str = "sagakit:events"
    events_maxlen: int = 100_000
    sweep_interval: float = 1.0
    """Seconds between sweeps (outbox re-sends, timeouts, deadlines)."""
    redrive_after: float = 30.0
    """Seconds after which a message no worker holds, whose queue is empty, is sent again
    (doubling with each re-send of the same message)."""
    time_limits: bool = False
    """Also have Celery enforce each step's timeout: a soft limit (SoftTimeLimitExceeded in
    the step) and a hard one (the pool process is killed) after twice the grace. Without,
    the sweeper times out an attempt that overruns and the step's policy retries it, but
    the process running it is left to finish; each limit costs the worker two timers per
    task."""
    timeout_grace: float = 5.0
    """Seconds added to a step's timeout before the sweeper declares it timed out."""
    record_patience: float = 10.0
    """Seconds a worker retries recording a step's outcome while the saga log is unreachable
    (with backoff) before it hands the outcome to the ``sagakit`` queue, where a sagakit
    worker records it once the log answers again."""
    worker_lost_after: float = 30.0
    """Seconds without a heartbeat after which a worker's running attempts are timed out."""
    visibility_timeout: float = 3600.0
    """Redis broker visibility timeout; must exceed every step timeout."""
    worker_concurrency: int = 4
    sse_max_seconds: float = 3600.0
    """Longest an event stream stays open."""
    retention: str | None = None
    """Prune completed and compensated sagas older than this (e.g. ``30d``; unset: keep
    everything). The sweepers do it a batch at a time; ``sagakit prune`` does it at once."""
    sse_ping_seconds: float = 15.0
    """Seconds between keep-alive comments on an idle event stream."""
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    tracing: bool = False
    """Send OpenTelemetry traces: one per saga (needs the ``tracing`` extra; the exporter is
    set by OpenTelemetry's ``OTEL_*`` variables, see docs/deployment.md)."""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    flower_url: str | None = None
    """Flower as the browser reaches it, for the dashboard's task links (default: the API's
    host on ``flower_port``)."""
    flower_user: str = "admin"
    flower_password: str | None = None
    """Flower's basic-auth password under ``sagakit up``; generated into the data dir if unset."""
    data_dir: Path = Field(default_factory=default_data_dir)
    """Where ``sagakit up`` keeps Flower's state file and its generated password (mode 0700)."""
    # --- choreography (`sagakit.choreography`: sagas run by events on a Redis Stream) ---
    choreography_stream: str = "sagakit:choreography"
    """The stream a choreography's events travel on; dead letters go to ``<stream>:dead``."""
    choreography_claim_idle: float = Field(default=30.0, gt=0)
    """Seconds a delivered event may stay unacknowledged before another consumer of the same
    group claims it (its consumer died or its handler raised)."""
    choreography_max_deliveries: int = Field(default=5, ge=1)
    """Deliveries of one event to one group before it goes to the dead-letter stream."""
    choreography_block: float = Field(default=1.0, gt=0)
    """Longest a participant or the tracker waits for new events in one read."""
    choreography_timeout: float | None = Field(default=None, gt=0)
    """Seconds the tracker waits for any step's completion event (unset: each step's own)."""

    @field_validator("imports", mode="before")
    @classmethod
    def _split_imports(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _read_token_beside_the_api_token(self) -> Settings:
        if self.api_read_token and not self.api_token:
            raise ValueError(
                "SAGAKIT_API_READ_TOKEN is set but SAGAKIT_API_TOKEN is not: reads would be "
                "protected and writes open; set SAGAKIT_API_TOKEN too"
            )
        if self.api_read_token and self.api_read_token == self.api_token:
            raise ValueError("SAGAKIT_API_READ_TOKEN must differ from SAGAKIT_API_TOKEN")
        return self

    @property
    def embedded(self) -> bool:
        """True when sagas run on the in-process broker and worker."""
        return self.broker_url.startswith("memory://")


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment, accepting the seed's variable names too."""
    env = os.environ
    if not env.get("SAGAKIT_BROKER_URL"):  # unset or empty: the seed's name, or the default
        overrides.setdefault("broker_url", env.get("CELERY_BROKER_URL") or EMBEDDED_BROKER)
    overrides.setdefault("database_url", database_url(env))
    return Settings(**overrides)  # type: ignore[arg-type]
