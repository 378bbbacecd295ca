"""The DuckDB warehouse's memory cap (`NIGHTSHIFT_DUCKDB_MEMORY_LIMIT`): every connection
the backend opens, and dbt's profile, run under it, so a night's memory does not grow with
the history (DuckDB's own default is 80% of RAM)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core import settings
from core.settings import ConfigError
from warehouse.backends import backend_for
from warehouse.dbt_runner import DUCKDB_MEMORY_LIMIT_ENV, dbt_target

ROOT = Path(__file__).resolve().parents[2]
SETTING = "select current_setting('memory_limit')"


@pytest.fixture
def warehouse_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("AIRFLOW_CONN_WAREHOUSE", raising=False)
    monkeypatch.delenv("DBT_TARGET", raising=False)
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    path = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("WAREHOUSE_PATH", str(path))
    return path


def test_default_and_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NIGHTSHIFT_DUCKDB_MEMORY_LIMIT", raising=False)
    assert settings.duckdb_memory_limit() == "512MB"
    monkeypatch.setenv("NIGHTSHIFT_DUCKDB_MEMORY_LIMIT", "2 GiB")
    assert settings.duckdb_memory_limit() == "2GiB"
    monkeypatch.setenv("NIGHTSHIFT_DUCKDB_MEMORY_LIMIT", "lots")
    with pytest.raises(ConfigError, match="NIGHTSHIFT_DUCKDB_MEMORY_LIMIT='lots'.*512MB"):
        settings.duckdb_memory_limit()


def test_every_backend_connection_runs_under_the_limit(
    warehouse_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_DUCKDB_MEMORY_LIMIT", "256MB")
    wh = backend_for()
    wh.execute("create schema if not exists raw")  # a writing connection
    assert wh.read_arrow(SETTING).column(0)[0].as_py() == "244.1 MiB"  # 256 MB in MiB
    with wh.transaction() as s:
        assert s.fetchone(SETTING) == ("244.1 MiB",)
    build = wh.begin_build("2026-11-27")
    assert wh.read_arrow(SETTING, build=build).column(0)[0].as_py() == "244.1 MiB"


def test_dbt_gets_the_same_limit(warehouse_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_DUCKDB_MEMORY_LIMIT", "300MB")
    assert dbt_target(backend_for()).env[DUCKDB_MEMORY_LIMIT_ENV] == "300MB"
    # by hand (`cd dbt_project && dbt build`): the profile's default is the settings' one
    profiles = (ROOT / "dbt_project" / "profiles.yml").read_text()
    found = re.findall(r"env_var\('NIGHTSHIFT_DUCKDB_MEMORY_LIMIT', '([^']+)'\)", profiles)
    assert found == [settings.DUCKDB_MEMORY_LIMIT_DEFAULT]
