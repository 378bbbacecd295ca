"""What the analytics Assets rest on (warehouse/export.py): the tables a publish changes,
compared with what is published, and the Parquet export of the published tables."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from warehouse.backends.duckdb import DuckDBWarehouse
from warehouse.export import changed_analytics_tables, export_analytics

TABLES = """
create schema if not exists analytics;
create table analytics.sales_summary (date date, region varchar,
    total_sales_usd decimal(18, 2), order_count bigint);
create table analytics.daily_sales (date date, region varchar, category varchar,
    total_sales_usd decimal(18, 2), order_count bigint);
insert into analytics.sales_summary values ('2026-03-01', 'eu', 10.50, 2), ('2026-03-01', 'us', 3.00, 1);
insert into analytics.daily_sales values ('2026-03-01', 'us', 'toys', 3.00, 1),
    ('2026-03-01', 'eu', 'books', 10.50, 2);
"""


def _warehouse(tmp_path: Path) -> DuckDBWarehouse:
    wh = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    build = wh.begin_build("r1")
    for statement in filter(str.strip, TABLES.split(";")):
        wh.execute(statement, build=build)
    assert changed_analytics_tables(wh, build) == ["sales_summary", "daily_sales"]  # 1st run
    wh.publish(build)
    return wh


def test_a_build_with_the_same_rows_changes_nothing_and_one_changed_row_counts(
    tmp_path: Path,
) -> None:
    wh = _warehouse(tmp_path)
    same = wh.begin_build("r2")
    assert changed_analytics_tables(wh, same) == []
    wh.abandon_build(same)
    moved = wh.begin_build("r3")
    wh.execute(
        "update {analytics}.daily_sales set category = ? where region = ?",
        ["games", "us"],
        build=moved,
    )
    assert changed_analytics_tables(wh, moved) == ["daily_sales"]


def test_the_export_writes_the_published_rows_sorted_by_key(tmp_path: Path) -> None:
    wh = _warehouse(tmp_path)
    out = tmp_path / "exports"
    assert export_analytics(wh, out, run_id="2026-03-01") == {"sales_summary": 2, "daily_sales": 2}
    daily = pq.read_table(out / "daily_sales.parquet").to_pylist()
    assert [r["region"] for r in daily] == ["eu", "us"]  # by (date, region, category)
    assert str(daily[0]["total_sales_usd"]) == "10.50"  # exact decimals, not floats
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == {"run_id": "2026-03-01", "rows": {"sales_summary": 2, "daily_sales": 2}}
    assert sorted(p.name for p in out.iterdir()) == [
        "daily_sales.parquet",
        "manifest.json",
        "sales_summary.parquet",
    ]  # no temporary file left behind


def test_a_build_without_the_analytics_tables_announces_nothing(tmp_path: Path) -> None:
    """A publish of raw tables only (steps run by hand) is no news, and no error."""
    wh = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    build = wh.begin_build("r1")
    wh.execute("create schema if not exists raw", build=build)
    assert changed_analytics_tables(wh, build) == []
