"""An empty variable means "unset": `.env.example` leaves optional ones empty, and a
copied `.env` must behave like no setting at all, never like "" or the current folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core import settings

BLANKS = ["", "   ", "\t"]


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a folder that is not the project, so "the current folder" shows."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in (
        "NIGHTSHIFT_DATA_DIR",
        "NIGHTSHIFT_LANDING_URL",
        "NIGHTSHIFT_LANDING_STAGE",
        "NIGHTSHIFT_QUARANTINE_URL",
        "NIGHTSHIFT_QUARANTINE_STAGE",
        "LANDING_DIR",
        "QUARANTINE_DIR",
        "REPORT_DIR",
        "WAREHOUSE_PATH",
        "QUALITY_DOCS_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    return cwd


@pytest.mark.parametrize("blank", BLANKS)
def test_env_treats_empty_and_whitespace_as_unset(
    blank: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_X", blank)
    assert settings.env("NIGHTSHIFT_X") is None
    assert settings.env("NIGHTSHIFT_X", "dflt") == "dflt"
    monkeypatch.delenv("NIGHTSHIFT_X")
    assert settings.env("NIGHTSHIFT_X") is None
    monkeypatch.setenv("NIGHTSHIFT_X", "  value \n")
    assert settings.env("NIGHTSHIFT_X", "dflt") == "value"


@pytest.mark.parametrize("blank", BLANKS)
def test_empty_data_dir_is_the_default_not_the_current_folder(
    blank: str, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", blank)
    assert settings.data_dir() == settings.PROJECT_ROOT / "data"
    assert settings.data_dir() != elsewhere


DATA = settings.PROJECT_ROOT / "data"


@pytest.mark.parametrize(
    "name, read, expected",
    [
        ("WAREHOUSE_PATH", settings.warehouse_path, DATA / "warehouse.duckdb"),
        ("QUALITY_DOCS_DIR", settings.quality_docs_dir, DATA / "docs" / "quality"),
        ("LANDING_DIR", settings.landing_dir, DATA / "landing"),
        ("NIGHTSHIFT_LANDING_URL", settings.landing_dir, DATA / "landing"),
        ("NIGHTSHIFT_LANDING_URL", settings.landing_url, str(DATA / "landing")),
        ("QUARANTINE_DIR", settings.quarantine_dir, DATA / "quarantine"),
        ("NIGHTSHIFT_QUARANTINE_URL", settings.quarantine_dir, DATA / "quarantine"),
        ("REPORT_DIR", settings.report_dir, DATA / "report"),
        ("EXTRACT_CONFIG", settings.extract_config_path, None),
        ("ALERTS_CONFIG", settings.alerts_config_path, None),
        ("SOURCE_DB_SHARD_MAP", settings.shard_map_path, None),
        ("RETENTION_CONFIG", settings.retention_config_path, DATA.parent / "config/retention.yml"),
        ("GUARDS_CONFIG", settings.guards_config_path, DATA.parent / "config/guards.yml"),
    ],
)
@pytest.mark.parametrize("blank", ["", "  "])
def test_empty_path_variables_mean_their_default(
    name: str,
    read: Callable[[], object],
    expected: object,
    blank: str,
    elsewhere: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", "")
    monkeypatch.setenv(name, blank)
    assert read() == expected


def test_empty_stage_of_an_s3_landing_is_its_default(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_LANDING_URL", "s3://bucket/landing")
    monkeypatch.setenv("NIGHTSHIFT_LANDING_STAGE", " ")
    assert settings.landing_dir() == DATA / "landing-stage"
    monkeypatch.setenv("NIGHTSHIFT_QUARANTINE_URL", "s3://bucket/quarantine")
    monkeypatch.setenv("NIGHTSHIFT_QUARANTINE_STAGE", "")
    assert settings.quarantine_dir() == DATA / "quarantine-stage"


def test_a_set_path_is_still_honoured(elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", " elsewhere-data ")
    assert settings.data_dir() == elsewhere / "elsewhere-data"
    assert settings.warehouse_path() == elsewhere / "elsewhere-data" / "warehouse.duckdb"


@pytest.mark.parametrize(
    "name, read, expected",
    [
        ("STATSD_PORT", settings.statsd_address, (None, 8125)),
        ("STATSD_HOST", settings.statsd_address, (None, 8125)),
        ("SOURCE_DB_REPLICA_MAX_LAG_SECONDS", settings.replica_max_lag_seconds, 300.0),
        ("SOURCE_DB_REPLICA_ON_LAG", settings.replica_on_lag, "primary"),
        ("DBT_TARGET", settings.dbt_target, "duckdb"),
        ("REPORT_TZ", settings.report_tz_name, "UTC"),
        ("TASK_TIMEOUT_MINUTES", settings.task_timeout_minutes, 180),
        ("WAREHOUSE_LEASE_WAIT_S", settings.warehouse_lease_wait_seconds, 60.0),
        ("ACCEPT_SCHEMA_DRIFT", settings.accept_schema_drift, ()),
    ],
)
@pytest.mark.parametrize("blank", ["", "  "])
def test_empty_values_mean_their_default(
    name: str,
    read: Callable[[], object],
    expected: object,
    blank: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for other in ("STATSD_HOST", "STATSD_PORT"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, blank)
    assert read() == expected


def test_empty_connection_is_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB", " ")
    assert settings.get_connection_uri(settings.SOURCE_DB_CONN_ID, required=False) is None
    with pytest.raises(settings.ConfigError, match="AIRFLOW_CONN_SOURCE_DB"):
        settings.get_connection_uri(settings.SOURCE_DB_CONN_ID)
