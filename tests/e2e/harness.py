"""Shared by the end-to-end tests: a real PostgreSQL source and the demo API on loopback,
`nightly_sales` through `airflow dags test`, and checks of what it published.

The published tables are compared with `tests/e2e/oracle.py`, an independent SQL
computation on the source.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from demo.generator import generate
from demo.run import running_api
from tests.e2e.oracle import expected_tables, load_fx, order_days
from tests.servers import fresh_database
from warehouse.backends import as_warehouse

REPORT_TZ = "America/New_York"  # not UTC: the business day boundary must be honoured
TOKEN = "e2e-secret-token"
ANALYTICS_TABLES = ("sales_summary", "daily_sales")


def source_uri(database_url: str) -> str:
    """A plain postgresql:// URL, as a user would put it in AIRFLOW_CONN_SOURCE_DB."""
    return (
        sa.make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


def pipeline_env(database_url: str, data_dir: Path, airflow_home: Path) -> dict[str, str]:
    """The environment of a nightly run against `database_url` (API added by the caller)."""
    return {
        "AIRFLOW_CONN_SOURCE_DB": source_uri(database_url),
        "NIGHTSHIFT_DATA_DIR": str(data_dir),
        "REPORT_TZ": REPORT_TZ,
        "AIRFLOW_HOME": str(airflow_home),
    }


def api_base_of(api_uri: str) -> str:
    """`http://:TOKEN@host:port` -> `http://host:port`."""
    return "http://" + api_uri.split("@", 1)[1]


END = date(2026, 11, 20)  # the generated sources' last day


@dataclass
class Running:
    """A generated PostgreSQL source at `url`, the demo API serving its payments on
    loopback, and `env`, the environment of a nightly run against both."""

    url: str
    engine: sa.Engine
    env: dict[str, str]
    api_base: str
    data_dir: Path
    payments_db: Path

    @property
    def warehouse(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    def sql(self, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Run `statement` on the source; its rows, if it returns any."""
        with self.engine.begin() as conn:
            result = conn.execute(sa.text(statement), params or {})
            return result.fetchall() if result.returns_rows else []


@contextmanager
def running_source(
    postgres_admin_url: str,
    tmp: Path,
    *,
    prefix: str,
    seed: int,
    days: int,
    orders_per_day: int,
    env: dict[str, str] | None = None,
    **api: Any,
) -> Iterator[Running]:
    """A fresh database named after `prefix`, generated (`seed`, `days` ending on END),
    the demo API on loopback (`api`: `running_api`'s options), the run's files under
    `tmp`; `env` is added to the runs' env. REPORT_TZ is set in this process meanwhile:
    `run_dag`'s logical date is in it."""
    payments_db = tmp / "payments.db"
    os.environ["REPORT_TZ"] = REPORT_TZ
    try:
        with fresh_database(postgres_admin_url, prefix=prefix) as url:
            generate(
                url,
                seed=seed,
                days=days,
                end_date=END,
                orders_per_day=orders_per_day,
                payments_db=payments_db,
                if_exists="replace",
            )
            engine = sa.create_engine(url)
            try:
                with running_api(payments_db, token=TOKEN, **api) as api_uri:
                    run_env = {
                        **pipeline_env(url, tmp / "data", tmp / "airflow"),
                        "AIRFLOW_CONN_PAYMENTS_API": api_uri,
                        **(env or {}),
                    }
                    yield Running(
                        url, engine, run_env, api_base_of(api_uri), tmp / "data", payments_db
                    )
            finally:
                engine.dispose()
    finally:
        os.environ.pop("REPORT_TZ", None)


def _rows(warehouse: Any, sql: str, params: list | None = None) -> list[tuple]:
    table = as_warehouse(warehouse).read_arrow(sql, params or [])
    return [tuple(r.values()) for r in table.to_pylist()]


# The contract's column types as each backend's information_schema names them.
CONTRACT_TYPES = {
    "duckdb": {
        ("sales_summary", "total_sales_usd"): "DECIMAL(18,2)",
        ("sales_summary", "order_count"): "BIGINT",
        ("sales_summary", "date"): "DATE",
        ("sales_summary", "region"): "VARCHAR",
        ("daily_sales", "total_sales_usd"): "DECIMAL(18,2)",
        ("daily_sales", "category"): "VARCHAR",
        ("daily_sales", "order_count"): "BIGINT",
    },
    "postgres": {
        ("sales_summary", "total_sales_usd"): "numeric(18,2)",
        ("sales_summary", "order_count"): "bigint",
        ("sales_summary", "date"): "date",
        ("sales_summary", "region"): "text",
        ("daily_sales", "total_sales_usd"): "numeric(18,2)",
        ("daily_sales", "category"): "text",
        ("daily_sales", "order_count"): "bigint",
    },
    "snowflake": {
        ("sales_summary", "total_sales_usd"): "NUMBER(18,2)",
        ("sales_summary", "order_count"): "NUMBER(38,0)",
        ("sales_summary", "date"): "DATE",
        ("sales_summary", "region"): "TEXT",
        ("daily_sales", "total_sales_usd"): "NUMBER(18,2)",
        ("daily_sales", "category"): "TEXT",
        ("daily_sales", "order_count"): "NUMBER(38,0)",
    },
}


def column_types(warehouse: Any) -> dict[tuple[str, str], str]:
    """{(table, column): type} of the published `analytics` tables, as the backend names it."""
    wh = as_warehouse(warehouse)
    if wh.kind == "postgres":
        sql = (
            "select table_name, column_name, case when data_type = 'numeric' then "
            "'numeric(' || numeric_precision || ',' || numeric_scale || ')' "
            "when data_type = 'character varying' then 'text' else data_type end "
            "from information_schema.columns where table_schema = 'analytics'"
        )
    elif wh.kind == "snowflake":  # upper-case names; NUMBER with its precision and scale
        sql = (
            "select lower(table_name), lower(column_name), case when data_type = 'NUMBER' "
            "then 'NUMBER(' || numeric_precision || ',' || numeric_scale || ')' "
            "else data_type end from information_schema.columns "
            "where table_schema = 'ANALYTICS'"
        )
    else:
        sql = (
            "select table_name, column_name, data_type from information_schema.columns "
            "where table_schema = 'analytics'"
        )
    return {(t, c): ty for t, c, ty in _rows(wh, sql)}


def published(warehouse: Any, through: date) -> tuple[set, set]:
    """(sales_summary rows, daily_sales rows) up to `through`, after checking the types.
    `warehouse`: the DuckDB file or a `Warehouse` (warehouse/backends)."""
    wh = as_warehouse(warehouse)
    summary = set(
        _rows(
            wh,
            "select date, region, total_sales_usd, order_count from analytics.sales_summary "
            "where date <= ?",
            [through],
        )
    )
    daily = set(
        _rows(
            wh,
            "select date, region, category, total_sales_usd, order_count "
            "from analytics.daily_sales where date <= ?",
            [through],
        )
    )
    types = column_types(wh)
    for (table, column), want in CONTRACT_TYPES[wh.kind].items():
        assert types.get((table, column)) == want, (table, column, types.get((table, column)))
    return summary, daily


def _sort_key(row: tuple) -> tuple:
    return tuple((v is None, v if v is not None else 0) for v in row)


def snapshot(warehouse: Any) -> dict[str, list]:
    """Every row of the published `analytics` tables, in a fixed order."""
    return {
        t: sorted(_rows(warehouse, f"select * from analytics.{t}"), key=_sort_key)
        for t in ANALYTICS_TABLES
    }


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (the published report pages, PNGs, CSVs)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_matches_oracle(engine: sa.Engine, warehouse: Any, api_base: str, through: date) -> None:
    """The published tables equal the oracle's, row for row, for every day up to `through`."""
    load_fx(engine, api_base, TOKEN, order_days(engine, REPORT_TZ, through))
    want_summary, want_daily = expected_tables(engine, REPORT_TZ, through)
    got_summary, got_daily = published(warehouse, through)
    assert want_summary, "the oracle found no data: the check would be vacuous"
    assert got_summary == want_summary, (
        f"sales_summary differs: missing {sorted(want_summary - got_summary)[:5]}, "
        f"extra {sorted(got_summary - want_summary)[:5]}"
    )
    assert got_daily == want_daily, (
        f"daily_sales differs: missing {sorted(want_daily - got_daily)[:5]}, "
        f"extra {sorted(got_daily - want_daily)[:5]}"
    )
