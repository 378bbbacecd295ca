"""The `ops` schema declared once (core/ops.py), created on real DuckDB and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from core import ops


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = con.execute(
        "select column_name, data_type from information_schema.columns "
        "where table_schema = 'ops' and table_name = ? order by ordinal_position",
        [table],
    ).fetchall()
    return dict(rows)


def test_every_table_is_created_on_a_duckdb_file_twice_without_change(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(ops.create_sql(schema=ops.SCHEMA))
    first = {t: _columns(con, t) for t in ops.TABLES}
    con.execute("insert into ops.restated_days values ('r1', date '2027-01-15', 'late')")
    con.execute(ops.create_sql(schema=ops.SCHEMA))  # idempotent: keeps tables and rows
    assert {t: _columns(con, t) for t in ops.TABLES} == first
    assert con.execute("select count(*) from ops.restated_days").fetchone() == (1,)
    assert first["pipeline_runs"]["metrics"] == "JSON"
    assert first["guard_overrides"]["details"] == "JSON"
    assert first["quality_results"]["details"] == "VARCHAR"
    assert list(first["loaded_runs"])[:4] == ["source", "table_name", "shard", "run_id"]


def test_only_the_named_tables_are_created(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute(ops.create_sql("quality_results", schema=ops.SCHEMA))
    tables = con.execute(
        "select table_name from information_schema.tables where table_schema = 'ops'"
    ).fetchall()
    assert tables == [("quality_results",)]


def test_an_unknown_table_is_named() -> None:
    with pytest.raises(KeyError, match="pipeline_run'.*known are"):
        ops.create_sql("pipeline_run")


def test_the_placeholder_is_left_for_the_session() -> None:
    sql = ops.create_sql("deleted_rows")
    assert "create schema if not exists {ops};" in sql
    assert "create table if not exists {ops}.deleted_rows (" in sql


def test_postgres_gets_text_for_the_lag_json_columns(pg_database: str) -> None:
    """PostgreSQL's json refuses `Infinity` (an unmeasured lag): those columns are text."""
    engine = sa.create_engine(pg_database)
    with engine.begin() as conn:
        conn.exec_driver_sql(ops.create_sql(kind="postgres", schema="ops"))
        types = dict(
            conn.execute(
                sa.text(
                    "select table_name || '.' || column_name, data_type "
                    "from information_schema.columns where table_schema = 'ops'"
                )
            ).all()
        )
        conn.execute(
            sa.text(
                "insert into ops.pipeline_runs (run_id, business_date, published_at, metrics) "
                "values ('r1', date '2027-01-15', now(), :m)"
            ),
            {"m": '{"freshness_lag_s": Infinity}'},
        )
    engine.dispose()
    assert types["pipeline_runs.metrics"] == "text"
    assert types["task_metrics.summary"] == "text"
    assert types["guard_overrides.details"] == "json"
    assert types["loaded_runs.manifest"] == "json"
    assert len({k.split(".")[0] for k in types}) == len(ops.TABLES)
