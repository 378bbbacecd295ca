"""Every setting that refuses a value says which variable and which value, and never
shows a secret: the message is all an operator sees in a failed task's log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core import settings

# (variable, bad value, the reader that validates it)
BAD_VALUES: list[tuple[str, str, Callable[[], object]]] = [
    ("FX_REVISION_DAYS", "-1", settings.fx_revision_days),
    ("FX_REVISION_DAYS", "a week", settings.fx_revision_days),
    ("FUTURE_TOLERANCE_MINUTES", "-5", settings.future_tolerance_minutes),
    ("FUTURE_TOLERANCE_MINUTES", "1h", settings.future_tolerance_minutes),
    ("WATERMARK_MAX_JUMP_DAYS", "-1", settings.watermark_max_jump_days),
    ("WATERMARK_MAX_JUMP_DAYS", "30d", settings.watermark_max_jump_days),
    ("EXTRACT_PARALLELISM", "0", settings.extract_parallelism),
    ("EXTRACT_PARALLELISM", "2.5", settings.extract_parallelism),
    ("SOURCE_DB_SHARD_WORKERS", "0", settings.shard_max_workers),
    ("SOURCE_DB_SHARD_WORKERS", "many", settings.shard_max_workers),
    ("SOURCE_DB_REPLICA_MAX_LAG_SECONDS", "-1", settings.replica_max_lag_seconds),
    ("SOURCE_DB_REPLICA_MAX_LAG_SECONDS", "5m", settings.replica_max_lag_seconds),
    ("SOURCE_DB_REPLICA_ON_LAG", "wait", settings.replica_on_lag),
    ("STATSD_PORT", "statsd", settings.statsd_address),
    ("STATSD_PORT", "70000", settings.statsd_address),
    ("DBT_TARGET", "redshift", settings.dbt_target),
    ("REPORT_TZ", "Mars/Olympus", settings.report_tz_name),
    ("REPORT_TZ", "CET+1", settings.report_tz_name),
    ("WAREHOUSE_LEASE_TTL_MINUTES", "0", settings.warehouse_lease_ttl_seconds),
    ("WAREHOUSE_LEASE_TTL_MINUTES", "half an hour", settings.warehouse_lease_ttl_seconds),
    ("WAREHOUSE_LEASE_WAIT_S", "-1", settings.warehouse_lease_wait_seconds),
    ("WAREHOUSE_LEASE_WAIT_S", "nan", settings.warehouse_lease_wait_seconds),
    ("ACCEPT_SCHEMA_DRIFT", "orders", settings.accept_schema_drift),
    ("SOURCE_DB_SHARD_MAP", "no-such-shards.yml", settings.shard_map_path),
]


@pytest.mark.parametrize(
    "name, value, read", BAD_VALUES, ids=[f"{n}={v}" for n, v, _ in BAD_VALUES]
)
def test_a_refused_value_is_named_with_its_variable(
    name: str,
    value: str,
    read: Callable[[], object],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative path resolves here, where nothing exists
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.ConfigError) as info:
        read()
    message = str(info.value)
    assert name in message, message
    # quoted, so that "must be > 0" does not pass for the value 0; a path is shown resolved
    shown = str(tmp_path / value) if name == "SOURCE_DB_SHARD_MAP" else repr(value)
    assert shown in message, message


@pytest.fixture
def no_lookup(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Connections from the environment only (no Airflow metadata DB)."""
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    for name in ("AIRFLOW_CONN_WAREHOUSE", "AIRFLOW_CONN_LANDING", "DBT_TARGET"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "uri, shown, problem",
    [
        ("ftp://:t0k%2Fen@api.example.com", "ftp://:***@api.example.com", "scheme"),
        ("https://:t0k%2Fen@/v1", "https://:***@/v1", "no host"),
        ("https://api.example.com:8443", "https://api.example.com:8443", "no token"),
    ],
)
def test_a_bad_payments_api_uri_is_named_without_its_token(
    uri: str, shown: str, problem: str
) -> None:
    with pytest.raises(settings.ConfigError) as info:
        settings.parse_api_uri(uri)
    message = str(info.value)
    assert f"AIRFLOW_CONN_PAYMENTS_API={shown!r}" in message and problem in message, message
    assert "t0k" not in message


def test_a_bad_landing_connection_is_named_without_its_secret(
    no_lookup: pytest.MonkeyPatch,
) -> None:
    no_lookup.setenv("AIRFLOW_CONN_LANDING", "gcs://KEY:S3cr%2Bt@/?region_name=eu")
    with pytest.raises(settings.ConfigError) as info:
        settings.landing_store_options()
    message = str(info.value)
    assert "AIRFLOW_CONN_LANDING='gcs://KEY:***@/?region_name=eu'" in message, message
    assert "got 'gcs'" in message and "S3cr" not in message


def test_a_bad_warehouse_connection_is_named_without_its_password(
    no_lookup: pytest.MonkeyPatch,
) -> None:
    no_lookup.setenv("AIRFLOW_CONN_WAREHOUSE", "oracle://etl:Pw0rd@db:1521/wh")
    with pytest.raises(settings.ConfigError) as info:
        settings.warehouse_backend()
    message = str(info.value)
    assert "AIRFLOW_CONN_WAREHOUSE" in message and "'oracle'" in message, message
    assert "Pw0rd" not in message
