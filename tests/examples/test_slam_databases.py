"""The SLAM services' settings and databases: one database each, or one shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from sagakit_examples.slam.databases import SchemaMismatch, ensure_schema, make_engine
from sagakit_examples.slam.settings import Service, SlamSettings
from sagakit_examples.slam.tables import SCHEMAS
from tests.support.slam import Mission, slam_system

KEYS = "sagakit_idempotency_keys"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("SAGAKIT_DATABASE_URL", "SLAM_DATABASE_URL", "SLAM_FLEET_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for service in Service:
        monkeypatch.delenv(f"SLAM_{service.upper()}_DATABASE_URL", raising=False)
    return monkeypatch


def test_services_default_to_the_saga_log_then_a_shared_then_their_own(
    clean_env: pytest.MonkeyPatch,
) -> None:
    assert {SlamSettings().database_for(s) for s in Service} == {"sqlite:///sagakit.db"}
    clean_env.setenv("SAGAKIT_DATABASE_URL", "postgresql://db/log")
    assert SlamSettings().database_for(Service.MAPPING) == "postgresql://db/log"
    clean_env.setenv("SLAM_DATABASE_URL", "postgresql://db/services")
    clean_env.setenv("SLAM_ROBOTS_DATABASE_URL", "postgresql://db/robots")
    settings = SlamSettings()
    assert settings.database_for(Service.ROBOTS) == "postgresql://db/robots"
    assert settings.database_for(Service.PLANNING) == "postgresql://db/services"
    assert settings.fleet_size == 8
    assert settings.map_path("s1") == Path("out/maps").resolve() / "s1.png"


@pytest.mark.parametrize("value", ["0", "1000", "many"])
def test_a_bad_fleet_size_names_the_setting(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv("SLAM_FLEET_SIZE", value)
    with pytest.raises(ValidationError, match="fleet_size"):
        SlamSettings()


def test_a_table_from_an_older_version_is_named_with_the_fix(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/old.db")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE slam_robots (id INTEGER PRIMARY KEY, name TEXT)")
    with pytest.raises(SchemaMismatch, match=r"slam_robots .* lacks added_at, held_by"):
        ensure_schema(engine, Service.ROBOTS, 8)
    engine.dispose()


def test_each_service_keeps_its_tables_in_its_own_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = {service: f"sqlite:///{tmp_path}/{service}.db" for service in Service}
    env = {f"SLAM_{service.upper()}_DATABASE_URL": url for service, url in urls.items()}
    with slam_system(tmp_path, monkeypatch, **env) as system:
        system.start_embedded()
        mission = Mission(system, tmp_path / "maps")
        done = mission.run()
        undone = mission.run(fail_at="integrate_maps")
        assert mission.held() == []

    assert done.status == "completed", done.reason
    assert undone.status == "compensated", undone.reason
    for service, url in urls.items():
        engine = sa.create_engine(url)
        assert set(sa.inspect(engine).get_table_names()) == {*SCHEMAS[service].tables, KEYS}
        engine.dispose()
    log = sa.create_engine(f"sqlite:///{tmp_path}/slam.db")
    assert not [name for name in sa.inspect(log).get_table_names() if name.startswith("slam_")]
    log.dispose()
