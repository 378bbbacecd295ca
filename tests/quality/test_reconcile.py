"""Reconciliation gates: source vs landed rows (same snapshot), landed rows vs their merged
copies, per business day."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from demo.generator import generate
from extract.db_extract import extract_tables
from extract.landing import write_landing_table
from quality.reconcile import (
    SOURCE_CHECKS,
    ReconciliationError,
    SourceTotals,
    check_source_totals,
    clear_source_totals,
    raise_for_source_mismatch,
    reconcile_run,
    write_source_totals,
)

NY = "America/New_York"

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


# ------------------------------------------- source -> landing, on real PostgreSQL


def _extract_with_totals(url: str, landing: Path, run_id: str, tz: str) -> Path:
    totals = SourceTotals(tz)
    clear_source_totals(landing, run_id)
    extract_tables(url, run_id=run_id, landing_root=landing, warehouse_path=None, aggregates=totals)
    return write_source_totals(landing, run_id, totals)


@pytest.fixture
def pg_source(pg_database: str) -> str:
    generate(pg_database, seed=5, days=3, end_date=date(2026, 11, 20), orders_per_day=30)
    return pg_database


def test_source_totals_match_the_landed_rows(pg_source: str, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    record = json.loads(_extract_with_totals(pg_source, landing, "2026-11-20", NY).read_text())
    assert record["unchecked"] == {}
    assert set(record["tables"]) == {"orders", "order_items", "products", "users"}
    # the source side really is per business day, from the source's own SQL
    engine = sa.create_engine(pg_source)
    with engine.connect() as conn:
        expected = conn.execute(
            sa.text(
                "select cast(timezone(:tz, created_at) as date), count(*), sum(total) "
                "from orders group by 1 order by 1"
            ),
            {"tz": NY},
        ).fetchall()
    engine.dispose()
    assert [(e["day"], e["rows"], Decimal(e["money"])) for e in record["tables"]["orders"]] == [
        (d.isoformat(), n, m) for d, n, m in expected
    ]
    result = check_source_totals(landing, "2026-11-20")
    assert result.success, [o.describe() for o in result.outcomes]
    assert {o.table for o in result.outcomes} == {
        "source_db.orders",
        "source_db.order_items",
        "source_db.products",
        "source_db.users",
    }
    raise_for_source_mismatch(result)  # no error


def test_source_changed_after_the_extract_still_reconciles(pg_source: str, tmp_path: Path) -> None:
    # The totals come from the extract's snapshot, not from a later look at the source.
    landing = tmp_path / "landing"
    _extract_with_totals(pg_source, landing, "2026-11-20", NY)
    engine = sa.create_engine(pg_source)
    with engine.begin() as conn:
        conn.execute(sa.text("update orders set total = total + 1"))
        conn.execute(
            sa.text("delete from order_items where id in (select min(id) from order_items)")
        )
    engine.dispose()
    assert check_source_totals(landing, "2026-11-20").success


def test_a_tampered_landed_file_fails_naming_table_day_and_both_numbers(
    pg_source: str, tmp_path: Path
) -> None:
    landing = tmp_path / "landing"
    _extract_with_totals(pg_source, landing, "2026-11-20", NY)
    [part] = (landing / "source_db/orders/run=2026-11-20").glob("*.parquet")
    table = pq.read_table(part)
    first = table.slice(0, 1).to_pylist()[0]
    day = first["created_at"].astimezone(ZoneInfo(NY)).date().isoformat()
    totals = table.column("total").to_pylist()
    totals[0] = totals[0] + Decimal("0.01")
    pq.write_table(
        table.set_column(
            table.schema.get_field_index("total"),
            "total",
            pa.array(totals, table.schema.field("total").type),
        ),
        part,
    )

    result = check_source_totals(landing, "2026-11-20")
    assert not result.success
    [failed] = [o for o in result.outcomes if not o.success]
    assert failed.table == "source_db.orders" and failed.severity == "critical"
    assert [s["day"] for s in failed.samples] == [day]
    sample = failed.samples[0]
    assert Decimal(sample["landing_money"]) - Decimal(sample["source_money"]) == Decimal("0.01")
    assert sample["source_rows"] == sample["landing_rows"]
    with pytest.raises(ReconciliationError) as err:
        raise_for_source_mismatch(result)
    assert (
        f"source_db.orders business day {day}: source {sample['source_rows']} rows / "
        f"{sample['source_money']} vs landing {sample['landing_rows']} rows / "
        f"{sample['landing_money']}"
    ) in str(err.value)


def test_a_missing_landed_row_fails(pg_source: str, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    _extract_with_totals(pg_source, landing, "2026-11-20", NY)
    [part] = (landing / "source_db/order_items/run=2026-11-20").glob("*.parquet")
    table = pq.read_table(part)
    pq.write_table(table.slice(1), part)
    result = check_source_totals(landing, "2026-11-20")
    [failed] = [o for o in result.outcomes if not o.success]
    assert failed.table == "source_db.order_items"
    assert [s["source_rows"] - s["landing_rows"] for s in failed.samples] == [1]


def test_no_record_means_no_source_check(tmp_path: Path) -> None:
    assert check_source_totals(tmp_path / "landing", "2026-11-20") is None


def test_sqlite_sources_are_recorded_as_unchecked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'src.db'}"
    generate(url, seed=5, days=1, end_date=date(2026, 11, 20), orders_per_day=5)
    record = json.loads(_extract_with_totals(url, tmp_path / "landing", "r1", NY).read_text())
    assert record["tables"] == {} and set(record["unchecked"]) == set(SOURCE_CHECKS)
    assert check_source_totals(tmp_path / "landing", "r1").outcomes == []


def test_parallel_key_ranges_keep_working_with_the_hook(
    pg_source: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The hook wraps the ranged reader (it does not replace it): ranges still run in the
    # exported snapshot, and the totals still equal what landed.
    landing = tmp_path / "landing"
    totals = SourceTotals(NY)
    with caplog.at_level(logging.INFO, logger="extract.db_extract"):
        extract_tables(
            pg_source,
            run_id="r1",
            landing_root=landing,
            warehouse_path=None,
            aggregates=totals,
            parallelism=2,
            parallel_min_rows=1,
        )
    write_source_totals(landing, "r1", totals)
    assert "key ranges of id at once" in caplog.text
    assert check_source_totals(landing, "r1").success
