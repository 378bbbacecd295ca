"""The same dbt project on a real PostgreSQL warehouse gives the same marts as on DuckDB.

The raw tables of tests/warehouse/test_dbt_project.py are made in a temp DuckDB file and
copied, type for type, into a fresh PostgreSQL database (schemas `raw` and `ops`). Both
warehouses are built in full, then changed the same way and built incrementally (var
run_id: the restatement path); every mart must be equal row for row each time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from tests.warehouse.test_dbt_project import (
    CHANGES_R2,
    EXPECTED_NEW_YORK,
    RAW_SQL,
)
from warehouse.dbt_runner import BuildPlan, DbtResult, dbt_build

REPORT_TZ = "America/New_York"
MARTS = (
    "marts.fct_orders",
    "marts.dim_users",
    "marts.dim_products",
    "marts.fct_order_items",
    "marts.fct_payments",
    "marts.fx_rates",
    "analytics.sales_summary",
)
RAW_TABLES = (
    "raw.users",
    "raw.products",
    "raw.orders",
    "raw.order_items",
    "raw.payments",
    "raw.fx_rates",
    "ops.restated_days",
)
OPS_SQL = """
CREATE SCHEMA IF NOT EXISTS ops;
CREATE TABLE ops.restated_days (
    run_id VARCHAR NOT NULL, business_date DATE NOT NULL, reason VARCHAR NOT NULL);
"""


def _pg_type(duckdb_type: str) -> str:
    """The PostgreSQL type of a DuckDB column type (the few the raw tables use)."""
    t = duckdb_type.upper()
    if t.startswith("DECIMAL"):
        return t.replace("DECIMAL", "numeric")
    return {
        "BIGINT": "bigint",
        "INTEGER": "integer",
        "VARCHAR": "text",
        "DATE": "date",
        "TIMESTAMP WITH TIME ZONE": "timestamptz",
        "BOOLEAN": "boolean",
    }[t]


def _copy_to_postgres(duck: Path, engine: sa.Engine) -> None:
    con = duckdb.connect(str(duck), read_only=True)
    try:
        with engine.begin() as pg:
            pg.exec_driver_sql("create schema raw; create schema ops")
            for table in RAW_TABLES:
                columns = con.execute(f"describe {table}").fetchall()
                ddl = ", ".join(f'"{c[0]}" {_pg_type(c[1])}' for c in columns)
                pg.exec_driver_sql(f"create table {table} ({ddl})")
                rows = con.execute(f"select * from {table}").fetchall()
                if rows:
                    names = [c[0] for c in columns]
                    quoted = ", ".join(f'"{n}"' for n in names)
                    params = ", ".join(f":{n}" for n in names)
                    insert = sa.text(f"insert into {table} ({quoted}) values ({params})")
                    pg.execute(insert, [dict(zip(names, r, strict=True)) for r in rows])
    finally:
        con.close()


def _normalise(value: Any) -> Any:
    """Compare values, not representations: exact decimals, UTC instants."""
    if isinstance(value, Decimal):
        return value.normalize()
    if isinstance(value, dt.datetime):
        assert value.tzinfo is not None, "timestamps must be tz-aware in both warehouses"
        return value.astimezone(dt.UTC)
    return value


def _rows(rows: list[tuple]) -> list[tuple]:
    normal = [tuple(_normalise(v) for v in r) for r in rows]
    return sorted(normal, key=lambda r: tuple((v is None, str(v)) for v in r))


def _duckdb_marts(path: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: _rows(con.execute(f"select * from {t}").fetchall()) for t in MARTS}
    finally:
        con.close()


def _postgres_marts(engine: sa.Engine) -> dict[str, list[tuple]]:
    with engine.connect() as pg:
        return {
            t: _rows([tuple(r) for r in pg.exec_driver_sql(f"select * from {t}")]) for t in MARTS
        }


def _pg_env(url: sa.URL) -> dict[str, str]:
    return {
        "DBT_POSTGRES_HOST": url.host or "127.0.0.1",
        "DBT_POSTGRES_PORT": str(url.port or 5432),
        "DBT_POSTGRES_USER": url.username or "postgres",
        "DBT_POSTGRES_PASSWORD": url.password or "",
        "DBT_POSTGRES_DBNAME": url.database or "",
        "DBT_POSTGRES_SCHEMA": "public",
    }


def _build_both(duck: Path, env: dict[str, str], run_id: str | None) -> tuple[DbtResult, DbtResult]:
    on_duckdb = dbt_build(duck, BuildPlan(REPORT_TZ, run_id=run_id))
    on_postgres = dbt_build(
        Path(os.devnull), BuildPlan(REPORT_TZ, run_id=run_id, target="postgres", env=env)
    )
    return on_duckdb, on_postgres


def _assert_equal_marts(duck: Path, engine: sa.Engine) -> None:
    in_duckdb, in_postgres = _duckdb_marts(duck), _postgres_marts(engine)
    for mart in MARTS:
        assert in_duckdb[mart], f"{mart} is empty: the comparison would be vacuous"
        assert in_postgres[mart] == in_duckdb[mart], f"{mart} differs between PostgreSQL and DuckDB"


def test_postgres_marts_equal_duckdb_row_for_row(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DBT_POSTGRES_THREADS", raising=False)  # the profile's default
    url = sa.make_url(pg_database)
    engine = sa.create_engine(url)
    duck = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(duck))
    try:
        con.execute(RAW_SQL + OPS_SQL)
    finally:
        con.close()
    try:
        _copy_to_postgres(duck, engine)
        env = _pg_env(url)

        _, on_postgres = _build_both(duck, env, run_id=None)  # full build
        _assert_equal_marts(duck, engine)
        summary = [r[:4] for r in _postgres_marts(engine)["analytics.sales_summary"]]
        assert summary == _rows(EXPECTED_NEW_YORK)
        # dbt-postgres reports rows affected; the runner's summary carries them
        assert on_postgres.summary()["models"]["sales_summary"]["rows_affected"] == len(
            EXPECTED_NEW_YORK
        )

        # the same changes in both, then the incremental restatement path (var run_id)
        con = duckdb.connect(str(duck))
        try:
            con.execute(CHANGES_R2)
        finally:
            con.close()
        with engine.begin() as pg:
            for statement in CHANGES_R2.split(";"):
                if statement.strip():
                    pg.exec_driver_sql(statement)
        on_duckdb, on_postgres = _build_both(duck, env, run_id="r2")
        assert not on_duckdb.failed and not on_postgres.failed
        _assert_equal_marts(duck, engine)
        with engine.connect() as pg:
            moved = pg.exec_driver_sql(
                "select business_date from marts.fct_orders where order_id = 3"
            ).scalar_one()
        assert moved == dt.date(2024, 1, 16)  # the restated move reached PostgreSQL too
        # one dbt thread on PostgreSQL unless DBT_POSTGRES_THREADS says otherwise: with
        # several, replacing two views that feed one view deadlocked here (profiles.yml)
        assert on_postgres.run_results_path is not None
        ran = json.loads(on_postgres.run_results_path.read_text())["results"]
        assert {r["thread_id"] for r in ran} == {"Thread-1 (worker)"}
    finally:
        engine.dispose()
