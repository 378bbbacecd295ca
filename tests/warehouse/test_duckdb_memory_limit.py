"""The DuckDB warehouse's memory cap (`NIGHTSHIFT_DUCKDB_MEMORY_LIMIT`): every connection
the backend opens, and dbt's profile, run under it, so a night's memory does not grow with
the history (DuckDB's own default is 80% of RAM)."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
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


def test_writers_checkpoint_early_and_dbt_does_the_same(tmp_path: Path) -> None:
    """A writable warehouse file checkpoints past CHECKPOINT_THRESHOLD (1MB, not DuckDB's
    16MB), and dbt's DuckDB target sets the same: committed changes held in memory until
    a checkpoint ran the nightly dbt build out of its memory limit."""
    import yaml

    from warehouse.backends.duckdb import CHECKPOINT_THRESHOLD, connect

    threshold = "select current_setting('checkpoint_threshold')"
    con = duckdb.connect()
    try:
        default = con.execute(threshold).fetchone()
        con.execute(f"set checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        ours = con.execute(threshold).fetchone()
    finally:
        con.close()
    assert ours != default
    path = tmp_path / "w.duckdb"
    con = connect(path)
    try:
        assert con.execute(threshold).fetchone() == ours
    finally:
        con.close()
    con = connect(path, read_only=True)  # reads never write a checkpoint
    try:
        assert con.execute(threshold).fetchone() == default
    finally:
        con.close()
    profiles = yaml.safe_load((ROOT / "dbt_project" / "profiles.yml").read_text())
    duckdb_target = profiles["nightshift"]["outputs"]["duckdb"]["settings"]
    assert duckdb_target["checkpoint_threshold"] == CHECKPOINT_THRESHOLD


def test_the_helper_applies_the_configured_limit_and_utc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from warehouse.backends.duckdb import connect

    monkeypatch.setenv("NIGHTSHIFT_DUCKDB_MEMORY_LIMIT", "300MB")
    settings_sql = "select current_setting('memory_limit'), current_setting('TimeZone')"
    for con in (connect(), connect(tmp_path / "w.duckdb")):
        try:
            assert con.execute(settings_sql).fetchone() == ("286.1 MiB", "UTC")
        finally:
            con.close()
    con = connect(memory_limit="256MB", threads=1, preserve_insertion_order=False)
    try:
        assert con.execute(
            "select current_setting('memory_limit'), current_setting('threads'), "
            "current_setting('preserve_insertion_order')"
        ).fetchone() == ("244.1 MiB", 1, False)
    finally:
        con.close()
    con = connect(memory_limit=None)  # DuckDB's own default, not the configured one
    try:
        assert con.execute(SETTING).fetchone() != ("286.1 MiB",)
    finally:
        con.close()


def test_a_read_only_connection_cannot_write(tmp_path: Path) -> None:
    import duckdb

    from warehouse.backends.duckdb import connect

    path = tmp_path / "w.duckdb"
    with connect(path) as con:
        con.execute("create table t (v int)")
    con = connect(path, read_only=True)
    try:
        with pytest.raises(duckdb.InvalidInputException, match="read-only"):
            con.execute("insert into t values (1)")
    finally:
        con.close()
    with connect(path) as con:
        assert con.execute("select count(*) from t").fetchone() == (0,)


def test_readers_of_the_published_file_run_under_the_limit(
    warehouse_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The query shell and the report's reads (`read_only_session`) too."""
    from warehouse.query import connect as shell_for
    from warehouse.query import read_only_session

    monkeypatch.setenv("NIGHTSHIFT_DUCKDB_MEMORY_LIMIT", "256MB")
    backend_for().execute("create schema if not exists raw")
    with read_only_session(backend_for()) as s:
        assert s.fetchone(SETTING) == ("244.1 MiB",)
    shell = shell_for(None)
    try:
        assert shell.run(SETTING, 1)[1] == [("244.1 MiB",)]
    finally:
        shell.close()


#: Modules of warehouse/ and quality/ that still open DuckDB by hand, each to move to the
#: helper. None may be added; remove an entry with its call.
OPENED_BY_HAND: set[str] = set()  # modules allowed to call duckdb.connect themselves


def _opened_by_hand() -> dict[str, list[int]]:
    helper = ROOT / "warehouse" / "backends" / "duckdb.py"
    found: dict[str, list[int]] = {}
    for folder in ("warehouse", "quality"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = path.read_text().splitlines()
            calls = [n for n, line in enumerate(lines, 1) if "duckdb.connect(" in line]
            if path != helper and calls:
                found[path.relative_to(ROOT).as_posix()] = calls
    return found


def test_duckdb_is_opened_through_the_helper_only() -> None:
    """warehouse/ and quality/ open DuckDB with `warehouse.backends.duckdb.connect`, so
    every connection gets the same settings."""
    found = _opened_by_hand()
    assert {m: n for m, n in found.items() if m not in OPENED_BY_HAND} == {}
    assert OPENED_BY_HAND <= set(found), "a listed module no longer opens DuckDB: unlist it"


def test_an_in_memory_connection_spills_under_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not `.tmp` in the task's working directory, which may be read-only or elsewhere."""
    from warehouse.backends.duckdb import connect

    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    con = connect(memory_limit="32MB", threads=1)
    try:
        assert con.execute("select current_setting('temp_directory')").fetchone() == (
            str(tmp_path / "data" / "tmp" / "duckdb"),
        )
        con.execute(
            "create table t as select range as i, md5(range::varchar) as h from range(2000000)"
        )
        assert con.execute("select count(distinct h) from t").fetchone() == (2_000_000,)
    finally:
        con.close()
    assert not (tmp_path / ".tmp").exists()
