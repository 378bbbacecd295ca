"""End to end: `nightly_sales` through real Airflow (`airflow dags test`) against a real
PostgreSQL source and the payments API on loopback with faults switched on.

Day 1 is published and checked against an independent SQL computation on the source;
then "the next day" happens at the source (late orders, updates, item deletes), day 2
is published and every day up to it is checked again, including the days the late and
updated rows touched; finally day 2 is rerun and the tables must be identical.
"""

from __future__ import annotations

import json
import os
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from demo.generator import apply_next_day, generate
from demo.run import running_api
from pipeline.airflow_run import run_dag
from tests.e2e.oracle import expected_tables, load_fx, order_days

pytestmark = pytest.mark.e2e

REPORT_TZ = "America/New_York"  # not UTC: the business day boundary must be honoured
END = date(2026, 11, 20)
TOKEN = "e2e-secret-token"


def published(warehouse: Path, through: date) -> tuple[set, set]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        summary = set(
            con.execute(
                "select date, region, total_sales_usd, order_count from analytics.sales_summary "
                "where date <= ?",
                [through],
            ).fetchall()
        )
        daily = set(
            con.execute(
                "select date, region, category, total_sales_usd, order_count "
                "from analytics.daily_sales where date <= ?",
                [through],
            ).fetchall()
        )
        types = con.execute(
            "select table_name, column_name, data_type from information_schema.columns "
            "where table_schema = 'analytics' order by table_name, ordinal_position"
        ).fetchall()
    finally:
        con.close()
    assert ("sales_summary", "total_sales_usd", "DECIMAL(18,2)") in types
    assert ("sales_summary", "order_count", "BIGINT") in types
    assert ("sales_summary", "date", "DATE") in types
    assert ("daily_sales", "total_sales_usd", "DECIMAL(18,2)") in types
    assert ("daily_sales", "category", "VARCHAR") in types
    return summary, daily


def snapshot(warehouse: Path) -> dict[str, list]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return {
            t: con.execute(f"select * from analytics.{t} order by all").fetchall()
            for t in ("sales_summary", "daily_sales")
        }
    finally:
        con.close()


def assert_matches_oracle(engine, warehouse: Path, api_base: str, through: date) -> None:
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


def test_nightly_sales_end_to_end(pg_database: str, tmp_path: Path) -> None:
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
    # A plain postgresql:// URL, as a user would put it in AIRFLOW_CONN_SOURCE_DB.
    source_uri = (
        sa.make_url(pg_database).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    base_env = {
        "AIRFLOW_CONN_SOURCE_DB": source_uri,
        "NIGHTSHIFT_DATA_DIR": str(data_dir),
        "REPORT_TZ": REPORT_TZ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
    }
    warehouse = data_dir / "warehouse.duckdb"
    faults = "rate_limit,server_error,repeat_page,malformed"
    os.environ["REPORT_TZ"] = REPORT_TZ  # for the helpers below that read settings
    try:
        with running_api(payments_db, token=TOKEN, faults=faults, fault_every=2) as api_uri:
            api_base = "http://" + api_uri.split("@", 1)[1]
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
    finally:
        os.environ.pop("REPORT_TZ", None)
        engine.dispose()
