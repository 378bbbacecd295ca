"""A row committed later than the extract's overlap behind the `updated_at` it carries
falls below every later window: no run reads it. The extract records how many rows each
table held up to its read bound in the run's snapshot (`source_rows`); the load fails
when raw then holds fewer, naming the table and the count, and nothing is published.
Real PostgreSQL source, DuckDB warehouse."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from core.settings import sqlalchemy_url
from demo.generator import generate
from extract.db_extract import ExtractPlan, extract_tables
from extract.tables import DEFAULT_TABLES
from extract.watermark import last_watermark
from warehouse.load import LoadError, SourceLoadPlan, load_source_db

END = date(2026, 11, 20)


@pytest.fixture
def source(pg_database: str) -> str:
    generate(pg_database, seed=7, days=3, end_date=END, orders_per_day=30)
    return pg_database


def _scalar(url: str, statement: str, **params):
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            return conn.execute(sa.text(statement), params).scalar()
    finally:
        engine.dispose()


def _night(url: str, landing: Path, warehouse: Path, run_id: str) -> dict:
    manifests = extract_tables(
        url, ExtractPlan(run_id=run_id, landing_root=landing, warehouse_path=warehouse)
    )
    load_source_db(landing, SourceLoadPlan(run_id, "UTC", warehouse_path=warehouse))
    return manifests


def _late_order(url: str, behind: str) -> int:
    """A new order stamped `behind` the newest order's updated_at: committed now, as a
    transaction that took that long would commit it."""
    return _scalar(
        url,
        "insert into orders (id, user_id, status, currency, total, created_at, updated_at) "
        "select max(id) + 1, min(user_id), 'paid', 'USD', 12.34, "
        f"max(updated_at) - interval '{behind}', max(updated_at) - interval '{behind}' "
        "from orders returning id",
    )


def _raw_orders(warehouse: Path) -> int:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute("select count(*) from raw.orders").fetchone()[0]
    finally:
        con.close()


def test_a_row_committed_later_than_the_overlap_stops_the_load(source: str, tmp_path: Path) -> None:
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    first = _night(source, landing, warehouse, "2026-11-20")
    orders = _scalar(source, "select count(*) from orders")
    assert first["orders"]["source_rows"] == orders == _raw_orders(warehouse)
    assert "source_rows" not in first["order_items"]  # hard deletes: its key set checks it

    # inside the overlap (15 min): read again by the next window, no error
    _late_order(source, "5 minutes")
    assert _night(source, landing, warehouse, "2026-11-21")["orders"]["source_rows"] == orders + 1
    assert _raw_orders(warehouse) == orders + 1

    # two hours behind: below the next window's start, never read
    missed = _late_order(source, "2 hours")
    with pytest.raises(LoadError) as caught:
        _night(source, landing, warehouse, "2026-11-22")
    message = str(caught.value)
    assert message.startswith("2026-11-22: raw.orders holds ")
    assert f"the source held {orders + 2} in the run's snapshot: 1 row(s) were never read" in (
        message
    )
    assert "overlap (900 s)" in message and "FULL=1" in message
    assert _raw_orders(warehouse) == orders + 1  # the load's transaction rolled back
    assert last_watermark(warehouse, "source_db", "orders").run_id == "2026-11-21"

    # the rerun with every table read in full (what FULL=1 does) lands it
    full = [dataclasses.replace(c, mode="full") for c in DEFAULT_TABLES]
    extract_tables(
        source,
        ExtractPlan(
            run_id="2026-11-22", landing_root=landing, warehouse_path=warehouse, configs=full
        ),
    )
    load_source_db(landing, SourceLoadPlan("2026-11-22", "UTC", warehouse_path=warehouse))
    assert _raw_orders(warehouse) == orders + 2
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        found = con.execute("select count(*) from raw.orders where id = ?", [missed]).fetchone()
        assert found == (1,)
    finally:
        con.close()
