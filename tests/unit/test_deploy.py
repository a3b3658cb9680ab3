"""The container deployment: Dockerfile, docker-compose.yml and .env.example.

No Docker engine is needed: `docker-compose config` validates and renders the compose file,
and every command in it is checked against the real entry points (the `sagakit` typer app,
celery's click group and Flower's options), every worker queue against the saga definitions,
and the environment the app services get against `sagakit.settings.load_settings`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

WORKERS = {
    "worker-robots",
    "worker-planning",
    "worker-exploration",
    "worker-mapping",
    "worker-sagakit",
}
APP_SERVICES = {"migrate", "api", "flower", *WORKERS}
SERVICES = {"redis", "db", "rabbitmq", *APP_SERVICES}
HEALTHY_DEPENDENCIES = {"redis", "db"}

# Distinct values for every variable the compose file substitutes, so that the tests can see
# each one arrive where it belongs.
DISTINCT_ENV = {
    "POSTGRES_DB": "missions",
    "POSTGRES_USER": "pg-user-x",
    "POSTGRES_PASSWORD": "pg-pass-x",
    "REDIS_PASSWORD": "redis-pass-x",
    "RABBITMQ_PASSWORD": "rabbit-pass-x",
    "SAGAKIT_BROKER_URL": "",  # Redis is the broker (test_the_rabbitmq_profile: RabbitMQ)
    "SAGAKIT_API_TOKEN": "api-token-x",
    "SAGAKIT_API_READ_TOKEN": "api-read-token-x",
    "SAGAKIT_API_PROTECT_SYSTEM": "true",
    "SAGAKIT_FLOWER_USER": "flower-user-x",
    "SAGAKIT_FLOWER_PASSWORD": "flower-pass-x",
    "SAGAKIT_FLOWER_URL": "https://flower.example.test",
    "SAGAKIT_BIND": "0.0.0.0",
    "SAGAKIT_LOG_LEVEL": "DEBUG",
    "SAGAKIT_TRACING": "true",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector-x:4318",
    "SAGAKIT_LOG_FORMAT": "json",
    "SLAM_FLEET_SIZE": "12",
    "SLAM_ROBOTS_DATABASE_URL": "postgresql+psycopg://u:p@robots-db:5432/robots",
    "SLAM_PLANNING_DATABASE_URL": "postgresql+psycopg://u:p@db:5432/planning",
    "SLAM_EXPLORATION_DATABASE_URL": "postgresql+psycopg://u:p@db:5432/exploration",
    "SLAM_MAPPING_DATABASE_URL": "postgresql+psycopg://u:p@db:5432/mapping",
}
PLACEHOLDER = re.compile(r"^$|change-?me|placeholder|example|<[^>]*>", re.IGNORECASE)
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$", re.IGNORECASE)
SECRETS = {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "SAGAKIT_API_TOKEN", "SAGAKIT_FLOWER_PASSWORD"}
OPTIONAL_SECRETS = {"SAGAKIT_API_READ_TOKEN", "RABBITMQ_PASSWORD"}
"""Secrets a deployment may leave out: empty by default, never a value."""


# -- helpers -------------------------------------------------------------------------------


def _compose_variables() -> set[str]:
    """Every ${VAR} the compose file substitutes."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))


def _docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        message = "docker-compose is not installed (Debian: apt-get install docker-compose)"
        if CI:
            pytest.fail(f"{message} (required in CI)")
        pytest.skip(message)
    return path


def _run_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run docker-compose on this project's file, with only `env_file` for substitutions."""
    variables = _compose_variables()
    env = {key: value for key, value in os.environ.items() if key not in variables}
    return subprocess.run(
        [_docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _render(env_file: Path) -> dict[str, Any]:
    done = _run_compose(env_file, "config")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert isinstance(config, dict)
    return config


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert command, "service has no command"
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return {name: {} for name in depends}
    return {name: dict(value or {}) for name, value in depends.items()}


def _volume_sources(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of each volume mount."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            mounts[rest.split(":")[0]] = source
        else:
            mounts[volume["target"]] = volume.get("source", "")
    return mounts


def _queues(command: list[str]) -> set[str]:
    """Queues named by a worker command's -Q/--queues option."""
    for i, arg in enumerate(command):
        if arg in ("-Q", "--queues"):
            value = command[i + 1]
        elif arg.startswith("--queues="):
            value = arg.partition("=")[2]
        elif arg.startswith("-Q") and len(arg) > 2:
            value = arg[2:]
        else:
            continue
        return {queue.strip() for queue in value.split(",") if queue.strip()}
    return set()


def _seconds(duration: str) -> float:
    """A compose duration such as 20s, 1m or 1m30s, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def _sagakit_cli() -> Any:
    """The `sagakit` command group (typer's own click-compatible group)."""
    import typer

    import sagakit.cli

    if not sagakit.cli.app.registered_commands:
        sagakit.cli._register_commands()
    group = typer.main.get_command(sagakit.cli.app)
    assert hasattr(group, "commands"), group
    return group


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example: not KEY=VALUE: {raw!r}"
        values[key.strip()] = value.strip().strip("'\"")
    return values


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty env file: compose as it is with no .env at all."""
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The compose file rendered with .env.example copied to .env."""
    return _render(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def distinct_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file rendered with a distinct value for every variable."""
    path = tmp_path_factory.mktemp("compose") / "distinct.env"
    path.write_text("".join(f"{key}={value}\n" for key, value in DISTINCT_ENV.items()))
    return _render(path)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No sagakit or seed variables in the environment, and no .env file in the cwd."""
    for key in list(os.environ):
        if key.startswith(("SAGAKIT_", "POSTGRES_")) or key == "CELERY_BROKER_URL":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


# -- the compose file ----------------------------------------------------------------------


def test_compose_file_without_an_env_file_fails_naming_a_secret(no_env_file: Path) -> None:
    done = _run_compose(no_env_file, "config", "-q")
    assert done.returncode != 0
    named = [name for name in SECRETS if f"{name} is not set" in done.stderr]
    assert len(named) == 1, done.stderr
    assert "copy .env.example to .env" in done.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_file_names_each_missing_secret(missing: str, tmp_path: Path) -> None:
    env_file = tmp_path / "partial.env"
    kept = {key: value for key, value in _env_example().items() if key != missing}
    env_file.write_text("".join(f"{key}={value}\n" for key, value in kept.items()))
    done = _run_compose(env_file, "config", "-q")
    assert done.returncode != 0
    assert f"{missing} is not set: copy .env.example to .env and set it" in done.stderr


def test_compose_file_is_valid_with_the_example_env_file() -> None:
    done = _run_compose(ENV_EXAMPLE, "config", "-q")
    assert done.returncode == 0, done.stderr


def test_compose_services(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == SERVICES
    assert services["redis"]["image"].startswith("redis:7")
    assert services["db"]["image"].startswith("postgres:15")
    images = {services[name].get("image") for name in APP_SERVICES}
    assert len(images) == 1, f"app services should share one image: {images}"
    assert images != {None}
    assert any("build" in services[name] for name in APP_SERVICES), "the image is never built"


def test_dependencies_wait_for_health_and_migration(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, service in services.items():
        for dependency, options in _depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if dependency in HEALTHY_DEPENDENCIES:
                assert options.get("condition") == "service_healthy", (name, dependency)
            if dependency == "migrate":
                assert options.get("condition") == "service_completed_successfully", name
    for name in [*WORKERS, "api"]:
        assert set(_depends_on(services[name])) >= {"redis", "db", "migrate"}, name
    assert set(_depends_on(services["migrate"])) == {"db"}
    assert "redis" in _depends_on(services["flower"])
    assert services["migrate"].get("restart", "no") == "no"


def test_redis_requires_a_password_and_persists(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    command = _command(redis)
    assert "--requirepass" in command
    assert command[command.index("--requirepass") + 1]
    assert "--appendonly" in command
    assert command[command.index("--appendonly") + 1] == "yes"
    healthcheck = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in healthcheck
    assert "ping" in healthcheck


def test_db_and_redis_have_healthchecks(config: dict[str, Any]) -> None:
    services = config["services"]
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    for name in ("redis", "db", "api", "flower", *WORKERS):
        healthcheck = services[name].get("healthcheck")
        assert healthcheck and healthcheck.get("test"), name
        assert not healthcheck.get("disable"), name
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])


def test_api_healthcheck_sends_the_token_that_protected_system_routes_need(
    distinct_config: dict[str, Any], tmp_path: Path
) -> None:
    from tests.support.served import embedded_server

    api = distinct_config["services"]["api"]
    test = api["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    code = test[3]
    assert "http://localhost:8000/healthz" in code
    env = _environment(api)
    assert env["SAGAKIT_API_PROTECT_SYSTEM"] == "true"

    def probe(base: str, token: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code.replace("http://localhost:8000", base)],
            env={**env, "SAGAKIT_API_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    with embedded_server(
        tmp_path, api_token=env["SAGAKIT_API_TOKEN"], api_protect_system=True
    ) as base:
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 401  # protected
        healthy = probe(base, env["SAGAKIT_API_TOKEN"])
        assert healthy.returncode == 0, healthy.stderr
        refused = probe(base, "not-the-token")
        assert refused.returncode != 0
        assert "401" in refused.stderr


def test_the_rabbitmq_profile(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    """With the profile's three settings in .env, every sagakit process uses RabbitMQ as its
    broker, with the user, password and vhost the rabbitmq service creates; Redis stays for
    the event stream. No service waits for RabbitMQ (a dependency on a service outside the
    active profiles is an error): the workers retry until it answers."""
    from sagakit.settings import load_settings

    url = "amqp://sagakit:rabbit-pass-x@rabbitmq:5672/sagakit"
    values = {**DISTINCT_ENV, "SAGAKIT_BROKER_URL": url}
    env_file = tmp_path / "rabbit.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    services = _render(env_file)["services"]

    rabbit = services["rabbitmq"]
    assert rabbit["profiles"] == ["rabbitmq"]
    assert rabbit["image"].startswith("rabbitmq:3")
    assert "rabbitmq-diagnostics" in rabbit["healthcheck"]["test"]
    assert "ports" not in rabbit
    assert _volume_sources(rabbit).get("/var/lib/rabbitmq") == "rabbitmq-data"
    rabbit_env = _environment(rabbit)
    parts = urlsplit(url)
    assert (rabbit_env["RABBITMQ_DEFAULT_USER"], rabbit_env["RABBITMQ_DEFAULT_PASS"]) == (
        parts.username,
        parts.password,
    )
    assert rabbit_env["RABBITMQ_DEFAULT_VHOST"] == parts.path.lstrip("/")
    assert all("rabbitmq" not in _depends_on(service) for service in services.values())
    for name in sorted(APP_SERVICES):
        for key, value in _environment(services[name]).items():
            clean_env.setenv(key, value)
        settings = load_settings()
        assert settings.broker_url == url, name
        assert urlsplit(settings.redis_url or "").hostname == "redis", name
        for key in _environment(services[name]):
            clean_env.delenv(key)


def test_named_volumes(config: dict[str, Any]) -> None:
    services = config["services"]
    volumes = set(config.get("volumes") or {})
    redis_data = _volume_sources(services["redis"]).get("/data")
    pg_data = _volume_sources(services["db"]).get("/var/lib/postgresql/data")
    flower_data = _volume_sources(services["flower"]).get("/data/sagakit")
    assert redis_data in volumes
    assert pg_data in volumes
    assert flower_data in volumes
    assert len({redis_data, pg_data, flower_data}) == 3


def test_flower_gets_basic_auth_through_its_environment(distinct_config: dict[str, Any]) -> None:
    services = distinct_config["services"]
    flower = services["flower"]
    user, password = DISTINCT_ENV["SAGAKIT_FLOWER_USER"], DISTINCT_ENV["SAGAKIT_FLOWER_PASSWORD"]
    assert _environment(flower)["FLOWER_BASIC_AUTH"] == f"{user}:{password}"
    command = " ".join(_command(flower))
    assert "basic-auth" not in command
    for secret in SECRETS:  # the command line is visible to every user of the host (ps)
        assert DISTINCT_ENV[secret] not in command, secret
    for name, service in services.items():  # only Flower knows its password
        if name != "flower":
            assert password not in " ".join(_environment(service).values()), name


def test_flower_keeps_its_state_in_a_volume(config: dict[str, Any]) -> None:
    flower = config["services"]["flower"]
    command = _command(flower)
    assert "--persistent=True" in command
    db = next(arg.partition("=")[2] for arg in command if arg.startswith("--db="))
    state_dir = str(Path(db).parent)
    assert _volume_sources(flower).get(state_dir) in (config.get("volumes") or {})
    assert _environment(flower)["SAGAKIT_DATA_DIR"] == state_dir


def test_published_ports(config: dict[str, Any]) -> None:
    services = config["services"]

    def targets(name: str) -> set[int]:
        found = set()
        for port in services[name].get("ports") or []:
            if isinstance(port, dict):
                found.add(int(port["target"]))
            else:
                found.add(int(str(port).split("/")[0].rsplit(":", 1)[-1]))
        return found

    assert targets("api") == {8000}
    assert targets("flower") == {5555}
    assert not services["redis"].get("ports")
    assert not services["db"].get("ports")


# -- commands are real entry points --------------------------------------------------------


def test_sagakit_commands_are_registered_with_their_options(config: dict[str, Any]) -> None:
    group = _sagakit_cli()
    checked = 0
    for name in sorted(APP_SERVICES):
        command = _command(config["services"][name])
        if command[0] != "sagakit":
            continue
        subcommand, args = command[1], command[2:]
        assert subcommand in group.commands, f"{name}: `sagakit {subcommand}` does not exist"
        click_command = group.commands[subcommand]
        known = {opt for param in click_command.params for opt in param.opts}
        known |= {opt for param in click_command.params for opt in param.secondary_opts}
        for arg in args:
            if arg.startswith("-"):
                assert arg.partition("=")[0] in known, f"{name}: {subcommand} has no {arg}"
        # Click parses (and type-checks) the arguments without running the command.
        click_command.make_context(subcommand, list(args))
        checked += 1
    assert checked == len(APP_SERVICES) - 1  # all but flower


def test_flower_command_is_a_real_celery_command(config: dict[str, Any]) -> None:
    from celery.bin.celery import celery
    from flower.options import options as flower_options

    command = _command(config["services"]["flower"])
    assert command[0] == "celery"
    assert "flower" in command
    split = command.index("flower")
    celery_args, flower_args = command[1:split], command[split + 1 :]
    assert "flower" in celery.commands  # the plugin celery finds through its entry point
    assert celery_args == ["-A", "sagakit.celery_app"]  # the broker comes from the settings
    assert "-A" in {opt for param in celery.params for opt in param.opts}
    for arg in flower_args:
        assert arg.startswith("--"), f"flower takes --name=value options: {arg}"
        name = arg[2:].partition("=")[0]
        assert name in flower_options, f"flower has no --{name}"
    assert "--port=5555" in flower_args


def test_flower_app_module_gives_the_broker_and_the_step_tasks(
    distinct_config: dict[str, Any],
) -> None:
    """`celery -A sagakit.celery_app` finds an app built from the service's environment."""
    import sys

    flower = distinct_config["services"]["flower"]
    env = {**os.environ, **_environment(flower), "PYTHONPATH": str(ROOT)}
    probe = (
        "from celery.app.utils import find_app; app = find_app('sagakit.celery_app'); "
        "print(app.conf.broker_url); print(' '.join(sorted(app.tasks)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    broker, tasks = done.stdout.splitlines()[-2:]
    assert broker == _environment(flower)["CELERY_BROKER_URL"]
    assert {"robots.allocate", "mapping.integrate", "sagakit.record_outcome"} <= set(tasks.split())


def test_flower_healthcheck_path_needs_no_auth() -> None:
    import tornado.web
    from flower.urls import handlers
    from flower.views.monitor import Healthcheck

    routes = {}
    for handler in handlers:
        if isinstance(handler, tornado.web.URLSpec):
            routes[handler.regex.pattern.rstrip("$")] = handler.target
        else:
            routes[handler[0]] = handler[1]
    assert routes.get("/healthcheck") is Healthcheck
    # Flower's protected views are wrapped by tornado's @web.authenticated decorator.
    assert not hasattr(Healthcheck.get, "__wrapped__")
    assert Healthcheck.prepare is tornado.web.RequestHandler.prepare


# -- queues --------------------------------------------------------------------------------


def test_worker_queues_are_saga_queues(config: dict[str, Any]) -> None:
    from sagakit.registry import discover
    from sagakit.runtime.app import SAGAKIT_QUEUE

    sagas = discover(["sagakit_examples.slam"])
    step_queues = set().union(*(saga.queues for saga in sagas.values()))
    served: set[str] = set()
    services = config["services"]
    for name in WORKERS:
        command = _command(services[name])
        assert command[:2] == ["sagakit", "worker"], name
        queues = _queues(command)
        assert queues, f"{name} names no queue (-Q)"
        unknown = queues - step_queues - {SAGAKIT_QUEUE}
        assert not unknown, f"{name} serves queues no saga step uses: {unknown}"
        assert not queues & served, f"{name} serves a queue another worker serves"
        served |= queues
    assert sagas["slam"].queues <= served, sagas["slam"].queues - served
    assert SAGAKIT_QUEUE in served
    assert {"robots", "planning", "exploration", "mapping"} <= sagas["slam"].queues


def test_every_worker_is_healthy_only_while_it_answers_a_ping(config: dict[str, Any]) -> None:
    group = _sagakit_cli()
    names = set()
    for name in sorted(WORKERS):
        service = config["services"][name]
        healthcheck = service["healthcheck"]
        test = healthcheck["test"]
        assert test[0] == "CMD", name  # exec form: sagakit's exit status is the verdict
        assert test[1:3] == ["sagakit", "ping"], name
        ping = group.commands["ping"].make_context("ping", list(test[3:]))
        worker = group.commands["worker"].make_context("worker", _command(service)[2:])
        # The same node name, expanded the same way in the same container.
        assert ping.params["hostname"] is not None, name
        assert ping.params["hostname"] == worker.params["hostname"], name
        names.add(ping.params["hostname"])
        # The broker connection and the reply each get the ping's timeout: both fit in docker's.
        assert 2 * ping.params["timeout"] < _seconds(healthcheck["timeout"]), name
        assert _seconds(healthcheck["start_period"]) >= 30, name
    assert len(names) == len(WORKERS)


# -- settings ------------------------------------------------------------------------------


def test_app_services_share_one_environment(distinct_config: dict[str, Any]) -> None:
    services = distinct_config["services"]
    envs = {name: _environment(services[name]) for name in sorted(APP_SERVICES)}
    flower_only = {key for key in envs["flower"] if key.startswith("FLOWER_")}
    assert flower_only == {"FLOWER_BASIC_AUTH"}
    shared = {key: value for key, value in envs["flower"].items() if key not in flower_only}
    assert all(env == shared for name, env in envs.items() if name != "flower")
    assert shared["SAGAKIT_IMPORTS"] == "sagakit_examples.slam"


def test_compose_environment_configures_postgres_and_redis(
    distinct_config: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    from sagakit.settings import load_settings

    services = distinct_config["services"]
    for key, value in _environment(services["api"]).items():
        clean_env.setenv(key, value)
    settings = load_settings()

    database = sa.make_url(settings.database_url)
    db_env = _environment(services["db"])
    assert database.drivername.startswith("postgresql")
    assert (database.host, database.port) == ("db", 5432)
    assert database.username == db_env["POSTGRES_USER"] == DISTINCT_ENV["POSTGRES_USER"]
    assert database.password == db_env["POSTGRES_PASSWORD"] == DISTINCT_ENV["POSTGRES_PASSWORD"]
    assert database.database == db_env["POSTGRES_DB"] == DISTINCT_ENV["POSTGRES_DB"]

    redis_command = _command(services["redis"])
    requirepass = redis_command[redis_command.index("--requirepass") + 1]
    assert requirepass == DISTINCT_ENV["REDIS_PASSWORD"]
    assert not settings.embedded
    for url in (settings.broker_url, settings.redis_url):
        assert url is not None
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname, parts.port) == ("redis", "redis", 6379)
        assert parts.password == requirepass

    assert settings.api_token == DISTINCT_ENV["SAGAKIT_API_TOKEN"]
    assert settings.api_read_token == DISTINCT_ENV["SAGAKIT_API_READ_TOKEN"]
    assert settings.api_protect_system is True
    assert settings.imports == ["sagakit_examples.slam"]
    assert str(settings.data_dir) == "/data/sagakit"
    assert settings.tracing is True
    assert _environment(services["api"])["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector-x:4318"


def test_the_example_env_file_leaves_the_read_token_and_system_protection_off(
    config: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    from sagakit.settings import load_settings

    for key, value in _environment(config["services"]["api"]).items():
        clean_env.setenv(key, value)
    settings = load_settings()

    assert settings.api_token == _env_example()["SAGAKIT_API_TOKEN"]
    assert not settings.api_read_token
    assert settings.api_protect_system is False


@pytest.mark.parametrize("env_file", ["distinct", "none"])
def test_compose_environment_configures_the_slam_services(
    env_file: str,
    distinct_config: dict[str, Any],
    config: dict[str, Any],
    clean_env: pytest.MonkeyPatch,
) -> None:
    from sagakit_examples.slam.settings import Service, SlamSettings

    rendered = distinct_config if env_file == "distinct" else config
    for key in [key for key in os.environ if key.startswith("SLAM_")]:
        clean_env.delenv(key)
    for key, value in _environment(rendered["services"]["worker-robots"]).items():
        clean_env.setenv(key, value)
    settings = SlamSettings()

    assert str(settings.output_dir) == "/data/maps"
    for service in Service:
        wanted = DISTINCT_ENV[f"SLAM_{service.upper()}_DATABASE_URL"]
        if env_file == "none":  # unset: the services share the saga log's database
            wanted = os.environ["SAGAKIT_DATABASE_URL"]
        assert settings.database_for(service) == wanted
    assert settings.fleet_size == (12 if env_file == "distinct" else 8)


def test_seed_variable_names_configure_postgres_and_redis(clean_env: pytest.MonkeyPatch) -> None:
    from sagakit.settings import load_settings

    clean_env.setenv("CELERY_BROKER_URL", "redis://redis:6379/0")
    clean_env.setenv("POSTGRES_HOST", "db")
    clean_env.setenv("POSTGRES_DB", "sagadb")
    clean_env.setenv("POSTGRES_USER", "sagauser")
    clean_env.setenv("POSTGRES_PASSWORD", "sagapass")
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://sagauser:sagapass@db:5432/sagadb"
    assert settings.broker_url == "redis://redis:6379/0"
    assert not settings.embedded


# -- .env.example --------------------------------------------------------------------------


def test_env_example_covers_the_compose_variables() -> None:
    missing = _compose_variables() - set(_env_example())
    assert not missing, f".env.example lacks {sorted(missing)}"
    assert set(DISTINCT_ENV) == _compose_variables()


def test_env_example_holds_no_real_secret() -> None:
    values = _env_example()
    secrets = {key: value for key, value in values.items() if SECRET_NAME.search(key)}
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "SAGAKIT_API_TOKEN"} <= set(secrets)
    for key, value in secrets.items():
        assert PLACEHOLDER.search(value), f".env.example: {key} looks like a real secret"
    text = ENV_EXAMPLE.read_text()
    assert "SAGAKIT_API_TOKEN" in text and ".env" in text


def test_no_secret_has_a_default() -> None:
    uses = re.findall(r"\$\{([A-Za-z0-9_]+)([^}]*)\}", COMPOSE_FILE.read_text())
    secrets = {name for name, _ in uses if SECRET_NAME.search(name)}
    assert secrets == SECRETS | OPTIONAL_SECRETS
    for name, rest in uses:
        if name in SECRETS:
            assert rest == f":?{name} is not set: copy .env.example to .env and set it", name
        elif name in OPTIONAL_SECRETS:
            assert rest == ":-", name
    assert all(_env_example()[name] == "" for name in OPTIONAL_SECRETS)


def test_real_env_file_stays_out_of_git_and_the_image() -> None:
    ignored = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert ".env" in ignored
    assert ".env" in {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}


# -- the image -----------------------------------------------------------------------------


def test_dockerfile_base_image_is_python_311_slim() -> None:
    bases = [args.split()[0] for keyword, args in _dockerfile_instructions() if keyword == "FROM"]
    assert bases
    match = re.fullmatch(
        r"(?:docker\.io/)?(?:library/)?python:3\.(\d+)(?:\.\d+)?-slim\S*", bases[-1]
    )
    assert match, f"base image {bases[-1]} is not a python slim image"
    assert int(match.group(1)) >= 11


def test_dockerfile_gives_the_app_user_a_private_data_dir() -> None:
    instructions = _dockerfile_instructions()
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert "SAGAKIT_DATA_DIR=/data/sagakit" in env
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(r"mkdir -p [^&]*/data/sagakit", runs)
    assert re.search(r"chown sagakit:sagakit [^&]*/data/sagakit", runs)
    assert "chmod 700 /data/sagakit" in runs


def test_dockerfile_runs_as_non_root() -> None:
    users = [args for keyword, args in _dockerfile_instructions() if keyword == "USER"]
    assert users, "no USER instruction: the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_installs_from_project_metadata() -> None:
    instructions = _dockerfile_instructions()
    copies = " ".join(args for keyword, args in instructions if keyword == "COPY")
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    assert "pyproject.toml" in copies
    # The SLAM example is installed with sagakit, from the wheel: nothing is run from /app.
    assert "examples" not in copies
    envs = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert "PYTHONPATH" not in envs
    installs = [run for run in runs if "pip install" in run]
    assert installs
    assert any(
        re.search(r"pip install[^&;]*\s['\"]?\.(\[api(,tracing)?\])?['\"]?(\s|$)", run)
        for run in runs
    )
    assert not any("requirements" in run or " -r " in run for run in installs)
    assert any(re.search(r"pip install[^&;]*\.\[api,tracing\]", run) for run in runs)
    workdirs = [args for keyword, args in instructions if keyword == "WORKDIR"]
    assert workdirs


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    for required in (".venv", ".git", "out"):
        assert required in patterns, required
    assert patterns & {"*.db", "**/*.db"}
    assert patterns & {"__pycache__", "**/__pycache__"}
