"""A row committed later than the extract's overlap behind the `updated_at` it carries
falls below every later window: no run reads it. The extract records how many rows each
table held up to its read bound in the run's snapshot (`source_rows`); the load fails
when raw then holds fewer, naming the table and the count, and nothing is published.
Real PostgreSQL source, DuckDB warehouse."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from core.settings import sqlalchemy_url
from demo.generator import generate
from demo.schema import orders
from extract.db_extract import (
    ExtractPlan,
    ShardReadPolicy,
    extract_sharded_source,
    extract_tables,
    shard_run_id,
)
from extract.landing import run_dir
from extract.tables import DEFAULT_TABLES
from extract.watermark import last_watermark
from tests.sqlite_shards import split_sqlite_source
from warehouse.load import LoadError, SourceLoadPlan, load_source_db, load_source_db_sharded

END = date(2026, 11, 20)


@pytest.fixture
def source(pg_database: str) -> str:
    generate(pg_database, seed=7, days=3, end_date=END, orders_per_day=30)
    return pg_database


def _scalar(url: str, statement: str, **params):
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(statement), params)
            return result.scalar() if result.returns_rows else None
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


def _raw_rows(warehouse: Path, table: str = "orders") -> int:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute(f"select count(*) from raw.{table}").fetchone()[0]
    finally:
        con.close()


def test_a_row_committed_later_than_the_overlap_stops_the_load(source: str, tmp_path: Path) -> None:
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    first = _night(source, landing, warehouse, "2026-11-20")
    orders = _scalar(source, "select count(*) from orders")
    assert first["orders"]["source_rows"] == orders == _raw_rows(warehouse)
    assert first["order_items"]["source_rows"] == _scalar(
        source, "select count(*) from order_items"
    )

    # inside the overlap (15 min): read again by the next window, no error
    _late_order(source, "5 minutes")
    assert _night(source, landing, warehouse, "2026-11-21")["orders"]["source_rows"] == orders + 1
    assert _raw_rows(warehouse) == orders + 1

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
    assert _raw_rows(warehouse) == orders + 1  # the load's transaction rolled back
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
    assert _raw_rows(warehouse) == orders + 2
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        found = con.execute("select count(*) from raw.orders where id = ?", [missed]).fetchone()
        assert found == (1,)
    finally:
        con.close()


def _late_item(url: str, behind: str) -> int:
    """A new item of the newest order, stamped `behind` the newest item's updated_at."""
    return _scalar(
        url,
        "insert into order_items (id, order_id, product_id, quantity, unit_price, updated_at) "
        "select max(id) + 1, max(order_id), min(product_id), 1, 5.00, "
        f"max(updated_at) - interval '{behind}' from order_items returning id",
    )


def test_an_item_never_read_stops_the_load_despite_hard_deletes(
    source: str, tmp_path: Path
) -> None:
    """`order_items` has hard deletes (its key set reconciles them): a night that deletes
    items and lands them in the same load is no false alarm, and an item committed later
    than the overlap still stops the load."""
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    _night(source, landing, warehouse, "2026-11-20")
    items = _scalar(source, "select count(*) from order_items")
    assert _raw_rows(warehouse, "order_items") == items

    # hard deletes and an item inside the overlap: reconciled and read, no error
    _scalar(source, "delete from order_items where id in (select min(id) from order_items)")
    _scalar(source, "delete from order_items where id in (select min(id) from order_items)")
    _late_item(source, "5 minutes")
    second = _night(source, landing, warehouse, "2026-11-21")
    assert second["order_items"]["source_rows"] == items - 1
    assert _raw_rows(warehouse, "order_items") == items - 1

    # two hours behind, beside one more hard delete: never read, the load stops
    _scalar(source, "delete from order_items where id in (select min(id) from order_items)")
    missed = _late_item(source, "2 hours")
    with pytest.raises(LoadError) as caught:
        _night(source, landing, warehouse, "2026-11-22")
    message = str(caught.value)
    assert f"raw.order_items holds {items - 2} rows after the merge" in message
    assert f"the source held {items - 1} in the run's snapshot: 1 row(s) were never read" in (
        message
    )
    assert _raw_rows(warehouse, "order_items") == items - 1  # rolled back
    assert last_watermark(warehouse, "source_db", "order_items").run_id == "2026-11-21"
    assert missed > 0


def _late_sharded_order(url: str, behind: timedelta) -> int:
    """A new order of shard `url` (its newest key + 1024: the same vshard) stamped
    `behind` its newest order's updated_at."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            newest = conn.execute(sa.select(sa.func.max(orders.c.updated_at))).scalar_one()
            key = conn.execute(sa.select(sa.func.max(orders.c.id))).scalar_one() + 1024
            stamp = newest - behind
            conn.execute(
                orders.insert().values(
                    id=key, user_id=1, status="paid", currency="USD", total=Decimal("7.00"),
                    created_at=stamp, updated_at=stamp,
                )
            )  # fmt: skip
        return key
    finally:
        engine.dispose()


def test_a_sharded_source_sums_its_shards(tmp_path: Path) -> None:
    """Each shard counts the rows it owns; the load compares raw with their sum."""
    a, b, shard_map = split_sqlite_source(tmp_path, seed=9, days=3, end_date=END, orders_per_day=30)
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"

    def night(run_id: str) -> dict:
        extract_sharded_source(
            shard_map,
            ExtractPlan(run_id=run_id, landing_root=landing, warehouse_path=warehouse),
            ShardReadPolicy(max_workers=2),
        )
        return load_source_db_sharded(
            landing, SourceLoadPlan(run_id, "UTC", warehouse_path=warehouse)
        )

    held = _scalar(a, "select count(*) from orders") + _scalar(b, "select count(*) from orders")
    assert night("r1")["raw_rows"]["orders"] == held
    manifests = [
        json.loads((run_dir(landing, "source_db", "orders", shard_run_id("r1", s)) / "_manifest.json").read_text())
        for s in ("a", "b")
    ]  # fmt: skip
    assert sum(m["source_rows"] for m in manifests) == held
    assert all(m["source_rows"] > 0 for m in manifests)

    _late_sharded_order(b, timedelta(minutes=5))
    assert night("r2")["raw_rows"]["orders"] == held + 1
    _late_sharded_order(b, timedelta(hours=2))
    with pytest.raises(LoadError) as caught:
        night("r3")
    assert (
        f"raw.orders holds {held + 1} rows after the merge, the source held {held + 2} in the "
        "run's snapshot: 1 row(s) were never read"
    ) in str(caught.value)
