"""The settings model (`core.settings.NightshiftSettings`): each plain variable's bounds,
blank meaning unset for every field, refusals that name the variable, the value and what
is accepted, and values read at call time with one bad variable failing only its own
readers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from core import settings
from core.settings import ConfigError, NightshiftSettings

FIELDS = sorted(NightshiftSettings.model_fields)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No variable of the model set: every field at its default."""
    for name in FIELDS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_a_blank_variable_is_its_default(name: str, blank: str, clean_env: pytest.MonkeyPatch):
    clean_env.setenv(name, blank)
    default = NightshiftSettings.model_fields[name].default
    assert getattr(NightshiftSettings(), name) == default
    assert settings.setting(name) == default


# (variable, reader, lowest or highest value accepted, the first refused, what is said)
BOUNDS: list[tuple[str, Callable[[], object], str, str, str]] = [
    ("FX_REVISION_DAYS", settings.fx_revision_days, "0", "-1", "must be >= 0"),
    ("FUTURE_TOLERANCE_MINUTES", settings.future_tolerance_minutes, "0", "-1", "must be >= 0"),
    ("WATERMARK_MAX_JUMP_DAYS", settings.watermark_max_jump_days, "0", "-1", "must be >= 0"),
    ("EXTRACT_PARALLELISM", settings.extract_parallelism, "1", "0", "must be >= 1"),
    ("SOURCE_DB_SHARD_WORKERS", settings.shard_max_workers, "1", "0", "must be >= 1"),
    ("STATSD_PORT", lambda: settings.statsd_address()[1], "1", "0", "must be >= 1"),
    ("STATSD_PORT", lambda: settings.statsd_address()[1], "65535", "65536", "must be <= 65535"),
    (
        "SOURCE_DB_REPLICA_MAX_LAG_SECONDS",
        settings.replica_max_lag_seconds,
        "0",
        "-0.5",
        "must be >= 0",
    ),
    ("WAREHOUSE_LEASE_WAIT_S", settings.warehouse_lease_wait_seconds, "0", "-1", "must be >= 0"),
    (
        "WAREHOUSE_LEASE_TTL_MINUTES",
        settings.warehouse_lease_ttl_seconds,
        "0.01",
        "0",
        "must be > 0",
    ),
]


@pytest.mark.parametrize(
    "name, read, accepted, refused, said",
    BOUNDS,
    ids=[f"{n}={r}" for n, _, _, r, _ in BOUNDS],
)
def test_bounds(
    name: str,
    read: Callable[[], object],
    accepted: str,
    refused: str,
    said: str,
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv(name, accepted)
    read()
    clean_env.setenv(name, refused)
    with pytest.raises(ConfigError) as info:
        read()
    assert str(info.value) == f"{name}={refused!r} {said}"


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("EXTRACT_PARALLELISM", "2.5", "EXTRACT_PARALLELISM='2.5' is not an integer"),
        ("STATSD_PORT", "statsd", "STATSD_PORT='statsd' is not an integer"),
        ("WAREHOUSE_LEASE_WAIT_S", "1m", "WAREHOUSE_LEASE_WAIT_S='1m' is not a number"),
        (
            "SOURCE_DB_REPLICA_ON_LAG",
            " wait ",
            "SOURCE_DB_REPLICA_ON_LAG='wait' is not one of primary, fail",
        ),
        (
            "DBT_TARGET",
            "redshift",
            "DBT_TARGET='redshift' is not one of duckdb, postgres, snowflake, bigquery",
        ),
        ("REPORT_TZ", "Mars/Olympus", "REPORT_TZ='Mars/Olympus' is not an IANA time zone name"),
        (
            "ACCEPT_SCHEMA_DRIFT",
            "orders.total, orders",
            "ACCEPT_SCHEMA_DRIFT='orders.total, orders' is refused: 'orders' is not "
            "<table>.<column> (or <table>.*), e.g. orders.total",
        ),
    ],
)
def test_a_refusal_names_the_variable_the_value_and_what_is_accepted(
    name: str, value: str, message: str, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        settings.setting(name)
    assert str(info.value) == message


def test_values_are_stripped(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FX_REVISION_DAYS", " 5\n")
    clean_env.setenv("SOURCE_DB_REPLICA_ON_LAG", " fail ")
    clean_env.setenv("NIGHTSHIFT_DUCKDB_MEMORY_LIMIT", " 2 GiB ")
    assert settings.fx_revision_days() == 5
    assert settings.replica_on_lag() == "fail"
    assert settings.duckdb_memory_limit() == "2GiB"


def test_each_read_sees_the_environment_of_the_moment(clean_env: pytest.MonkeyPatch) -> None:
    assert settings.fx_revision_days() == 7
    clean_env.setenv("FX_REVISION_DAYS", "3")
    assert settings.fx_revision_days() == 3
    clean_env.setenv("FX_REVISION_DAYS", "4")
    assert settings.fx_revision_days() == 4
    clean_env.setenv("FX_REVISION_DAYS", "-4")
    with pytest.raises(ConfigError):
        settings.fx_revision_days()
    clean_env.delenv("FX_REVISION_DAYS")
    assert settings.fx_revision_days() == 7


def test_a_bad_variable_fails_only_its_own_readers(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STATSD_PORT", "statsd")
    clean_env.setenv("FX_REVISION_DAYS", "3")
    assert settings.fx_revision_days() == 3
    assert settings.task_timeout_minutes() == 180
    with pytest.raises(ConfigError, match="STATSD_PORT='statsd'"):
        settings.statsd_address()
    clean_env.setenv("TASK_TIMEOUT_MINUTES", "0")
    with pytest.raises(ConfigError, match="TASK_TIMEOUT_MINUTES='0'"):
        settings.task_timeout_minutes()
    with pytest.raises(ConfigError, match="STATSD_PORT='statsd'"):
        settings.statsd_address()
    clean_env.setenv("STATSD_PORT", "9125")
    assert settings.statsd_address() == (None, 9125)


def test_only_the_process_environment_is_read(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """No `.env` file (here or in the project: `make` reads it), and the exact
    upper-case name only."""
    (tmp_path / ".env").write_text("FX_REVISION_DAYS=99\n")
    clean_env.chdir(tmp_path)
    clean_env.setenv("fx_revision_days", "98")
    assert settings.fx_revision_days() == 7
    assert NightshiftSettings().FX_REVISION_DAYS == 7


def test_a_reader_is_documented_by_its_field() -> None:
    doc = settings.fx_revision_days.__doc__ or ""
    assert doc.startswith("`FX_REVISION_DAYS` (default 7): ") and "FX rates" in doc
    assert settings.fx_revision_days.__annotations__ == {"return": int}


def test_the_dbt_targets_are_the_fields_choices() -> None:
    assert settings.DBT_TARGETS == ("duckdb", "postgres", "snowflake", "bigquery")


# Values TASK_TIMEOUT_MINUTES's reader takes without the model (unset, blank, plain digits
# at or above the minimum) and values it hands to the model (everything else).
TASK_TIMEOUT_VALUES = [
    *["", "  ", "7", " 7\n", "007", "1", "180", "9" * 18],
    *["0", "00", "-0", "-3", "+7", "7_0", "7.0", "7.5", "1e2", "seven", "٣", "9" * 25],
]


@pytest.mark.parametrize("value", TASK_TIMEOUT_VALUES)
def test_task_timeout_minutes_reads_as_the_model(value: str, clean_env: pytest.MonkeyPatch) -> None:
    """The DAG files read TASK_TIMEOUT_MINUTES at parse time without building the model:
    the same value, or the same refusal, as the model's field."""
    clean_env.setenv("TASK_TIMEOUT_MINUTES", value)
    try:
        want: object = settings.setting("TASK_TIMEOUT_MINUTES")
    except ConfigError as exc:
        with pytest.raises(ConfigError) as info:
            settings.task_timeout_minutes()
        assert str(info.value) == str(exc)
    else:
        assert settings.task_timeout_minutes() == want


@pytest.mark.parametrize("value", ["", "7", " 45 "])
def test_task_timeout_minutes_is_read_without_pydantic_settings(value: str) -> None:
    """A DAG file's parse pays neither pydantic-settings' import nor the model's build."""
    probe = (
        "import sys; from core import settings; minutes = settings.task_timeout_minutes(); "
        "print(minutes, 'pydantic_settings' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "TASK_TIMEOUT_MINUTES": value}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(int(value) if value.strip() else 180), "False"]
