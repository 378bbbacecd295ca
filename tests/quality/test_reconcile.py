"""Reconciliation gate: landed rows vs their merged copies, per business day."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from extract.landing import write_landing_table
from quality.reconcile import ReconciliationError, reconcile_run

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("user_id", pa.int64()),
        ("status", pa.string()),
        ("currency", pa.string()),
        ("total", pa.decimal128(12, 2)),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _setup(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    ts = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)  # 2026-11-19 in New York
    late = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    rows = {
        "id": [1, 2, 3],
        "user_id": [1, 1, 2],
        "status": ["paid", "paid", "cancelled"],
        "currency": ["USD", "EUR", "USD"],
        "total": [Decimal("10.00"), Decimal("2.50"), Decimal("7.25")],
        "created_at": [ts, late, late],
        "updated_at": [late, late, late],
    }
    write_landing_table(
        pa.table(rows, schema=SCHEMA),
        schema=SCHEMA,
        landing_root=tmp_path / "landing",
        source="source_db",
        table_name="orders",
        run_id="2026-11-20",
    )
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("create schema raw")
    con.execute(
        "create table raw.orders as select * from read_parquet(?, hive_partitioning = false)",
        [str(tmp_path / "landing/source_db/orders/run=2026-11-20/*.parquet")],
    )
    con.execute("insert into raw.orders values (9, 1, 'paid', 'USD', 1.00, now(), now())")
    return con


def test_merged_rows_reconcile(tmp_path: Path) -> None:
    con = _setup(tmp_path)
    checked = reconcile_run(
        con, tmp_path / "landing", "source_db", "2026-11-20", "America/New_York"
    )
    assert checked == {"orders": 3}


def test_a_changed_amount_fails_naming_table_day_and_numbers(tmp_path: Path) -> None:
    con = _setup(tmp_path)
    con.execute("update raw.orders set total = 11.00 where id = 1")
    with pytest.raises(ReconciliationError) as err:
        reconcile_run(con, tmp_path / "landing", "source_db", "2026-11-20", "America/New_York")
    message = str(err.value)
    assert "source_db.orders business day 2026-11-19" in message
    assert "landed 1 rows / 10.00 vs warehouse 1 rows / 11.00" in message


def test_a_lost_row_fails(tmp_path: Path) -> None:
    con = _setup(tmp_path)
    con.execute("delete from raw.orders where id = 3")
    with pytest.raises(
        ReconciliationError, match=r"2026-11-20: landed 2 rows / 9.75 vs warehouse 1 rows / 2.50"
    ):
        reconcile_run(con, tmp_path / "landing", "source_db", "2026-11-20", "America/New_York")
