"""End to end: `nightly_sales` through real Airflow (`airflow dags test`) against a real
PostgreSQL source and the payments API on loopback with faults switched on.

Day 1 is published and checked against an independent SQL computation on the source;
then "the next day" happens at the source (late orders, updates, item deletes), day 2
is published and every day up to it is checked again, including the days the late and
updated rows touched; finally day 2 is rerun and the tables must be identical.

The same nights run on both warehouses: the DuckDB file (the default) and a PostgreSQL
warehouse (`AIRFLOW_CONN_WAREHOUSE`, builds in private schemas, publish by schema
swap). Both must equal the oracle, so they equal each other row for row.
"""

from __future__ import annotations

import json
import os
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from demo.generator import apply_next_day, generate
from demo.run import running_api
from pipeline.airflow_run import run_dag
from tests.e2e.harness import (
    REPORT_TZ,
    TOKEN,
    api_base_of,
    assert_matches_oracle,
    pipeline_env,
    snapshot,
)
from warehouse.backends.postgres import PostgresWarehouse

pytestmark = pytest.mark.e2e

END = date(2026, 11, 20)


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse_kind(request: pytest.FixtureRequest) -> str:
    return request.param


def test_nightly_sales_end_to_end(
    pg_database: str, warehouse_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    payments_db = tmp_path / "payments.db"
    generate(
        pg_database,
        seed=7,
        days=12,
        end_date=END,
        orders_per_day=100,
        payments_db=payments_db,
        if_exists="replace",
    )
    engine = sa.create_engine(pg_database)
    base_env = pipeline_env(pg_database, data_dir, tmp_path / "airflow")
    warehouse: Any = data_dir / "warehouse.duckdb"
    if warehouse_kind == "postgres":
        url = request.getfixturevalue("pg_warehouse_url")
        base_env["AIRFLOW_CONN_WAREHOUSE"] = url
        warehouse = PostgresWarehouse(url)
    faults = "rate_limit,server_error,repeat_page,malformed"
    os.environ["REPORT_TZ"] = REPORT_TZ  # for the helpers below that read settings
    try:
        with running_api(payments_db, token=TOKEN, faults=faults, fault_every=2) as api_uri:
            api_base = api_base_of(api_uri)
            env = {**base_env, "AIRFLOW_CONN_PAYMENTS_API": api_uri}

            # not the last day with orders: later days exist, need no FX and are not judged
            day1 = END - timedelta(days=2)
            run_dag(day1, env)
            assert_matches_oracle(engine, warehouse, api_base, day1)
            report = data_dir / "report" / f"{day1.isoformat()}.html"
            assert report.exists() and "unknown" in report.read_text()
            quarantine = list((data_dir / "quarantine").rglob("*.jsonl"))
            assert quarantine, "the malformed API record did not reach the quarantine"
            first = json.loads(quarantine[0].read_text().splitlines()[0])
            assert first["field"] and first["error"]

            before = snapshot(warehouse)
            summary = apply_next_day(pg_database, seed=8, payments_db=payments_db)
            day2 = date.fromisoformat(str(summary["date"]))
            late_utc = {
                date.fromisoformat(str(d)) for d in summary["touched_days_by_kind"]["late_orders"]
            }
            assert late_utc and max(late_utc) < day2, summary
            # a UTC day is the same or the previous business day in New York
            touched = late_utc | {d - timedelta(days=1) for d in late_utc}

            run_dag(day2, env)
            assert_matches_oracle(engine, warehouse, api_base, day2)
            after = snapshot(warehouse)
            old_days = {r[0] for r in after["sales_summary"] if r[0] <= day1}
            assert old_days, "no history left after day 2"
            changed = {r[0] for r in set(after["sales_summary"]) ^ set(before["sales_summary"])}
            assert changed & {d for d in touched if d <= day1}, (
                "late rows did not restate an earlier day",
                touched,
                changed,
            )

            run_dag(day2, env)  # a rerun of the same day gives identical tables
            assert snapshot(warehouse) == after
            if warehouse_kind == "postgres":
                assert not (data_dir / "warehouse.duckdb").exists(), "a DuckDB file was written"
                leftovers = warehouse.read_arrow(
                    "select nspname from pg_namespace where nspname like ?", ["%\\_\\_build\\_%"]
                )
                assert leftovers.num_rows == 0, leftovers.to_pylist()
    finally:
        os.environ.pop("REPORT_TZ", None)
        engine.dispose()
