"""Settings come from the environment, with the seed's names accepted too."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from sagakit.environ import database_url
from sagakit.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("SAGAKIT_", "POSTGRES_", "CELERY_")):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_default() -> None:
    settings = load_settings()
    assert settings.embedded
    assert settings.database_url == "sqlite:///sagakit.db"


def test_postgres_password_with_url_characters_survives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "db")
    monkeypatch.setenv("POSTGRES_USER", "saga")
    monkeypatch.setenv("POSTGRES_PASSWORD", "p@ss:w/rd#1")
    monkeypatch.setenv("POSTGRES_DB", "sagas")
    url = sa.make_url(load_settings().database_url)
    assert (url.username, url.password, url.host, url.database) == (
        "saga",
        "p@ss:w/rd#1",
        "db",
        "sagas",
    )


def test_sagakit_names_win_over_the_seed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://seed:6379/0")
    monkeypatch.setenv("SAGAKIT_BROKER_URL", "redis://mine:6379/0")
    monkeypatch.setenv("SAGAKIT_IMPORTS", "a.b, c")
    settings = load_settings()
    assert settings.broker_url == "redis://mine:6379/0"
    assert settings.imports == ["a.b", "c"]


def test_an_empty_broker_url_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose passes SAGAKIT_BROKER_URL empty unless its rabbitmq profile sets it."""
    monkeypatch.setenv("SAGAKIT_BROKER_URL", "")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://seed:6379/0")
    assert load_settings().broker_url == "redis://seed:6379/0"
    monkeypatch.delenv("CELERY_BROKER_URL")
    assert load_settings().embedded


def test_a_dotenv_file_in_the_working_directory_is_not_read(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    (tmp_path / ".env").write_text("SAGAKIT_API_TOKEN=change-me\n")  # type: ignore[operator]
    assert load_settings().api_token is None


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"SAGAKIT_DATABASE_URL": "postgresql://mine/sagas"},
        {"sagakit_database_url": "postgresql://lower/sagas"},
        {"POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "p@ss", "POSTGRES_PORT": "6543"},
        {"POSTGRES_HOST": "db", "SAGAKIT_DATABASE_URL": "sqlite:///mine.db"},
    ],
)
def test_the_commands_that_only_read_find_the_log_where_the_settings_say(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert database_url() == load_settings().database_url
    if "POSTGRES_HOST" not in env:  # pydantic-settings alone: the seed's names are not its
        assert database_url() == Settings().database_url
