"""warehouse.load.load_raw: Parquet landing runs into the DuckDB `raw` schema."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from warehouse.load import LoadError, load_raw

UTC = dt.UTC


def _write(landing: Path, source: str, table: str, run_id: str, parts: list[pa.Table]) -> Path:
    directory = landing / source / table / f"run={run_id}"
    directory.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(parts):
        pq.write_table(part, directory / f"part-{i:05d}.parquet")
    return directory


def _orders(ids: list[int], extra: bool = False) -> pa.Table:
    n = len(ids)
    columns = {
        "id": pa.array(ids, pa.int64()),
        "user_id": pa.array([1] * n, pa.int64()),
        "status": pa.array(["paid"] * n, pa.string()),
        "currency": pa.array(["EUR"] * n, pa.string()),
        "total": pa.array([Decimal("10.00")] * n, pa.decimal128(12, 2)),
        "created_at": pa.array(
            [dt.datetime(2024, 1, 15, 12, tzinfo=UTC)] * n, pa.timestamp("us", tz="UTC")
        ),
        "updated_at": pa.array(
            [dt.datetime(2024, 1, 15, 12, tzinfo=UTC)] * n, pa.timestamp("us", tz="UTC")
        ),
    }
    if extra:
        columns["coupon"] = pa.array(["X"] * n, pa.string())
    return pa.table(columns)


def _fx_rates() -> pa.Table:
    return pa.table(
        {
            "rate_date": pa.array([dt.date(2024, 1, 15)] * 2, pa.date32()),
            "base": pa.array(["USD", "USD"], pa.string()),
            "currency": pa.array(["USD", "EUR"], pa.string()),
            "rate": pa.array([Decimal("1"), Decimal("0.9213")], pa.decimal128(38, 18)),
        }
    )


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    root = tmp_path / "landing"
    # two part files, the second with an extra column: union_by_name keeps both
    _write(root, "source_db", "orders", "2024-01-15", [_orders([1, 2]), _orders([3], extra=True)])
    _write(root, "payments_api", "fx_rates", "2024-01-15", [_fx_rates()])
    return root


RUNS = {"source_db/orders": "2024-01-15", "payments_api/fx_rates": "2024-01-15"}


def _rows(path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_load_twice_is_idempotent(tmp_path: Path, landing: Path) -> None:
    warehouse = tmp_path / "wh" / "warehouse.duckdb"
    assert load_raw(warehouse, landing, RUNS) == {"orders": 3, "fx_rates": 2}
    assert load_raw(warehouse, landing, RUNS) == {"orders": 3, "fx_rates": 2}
    assert _rows(warehouse, "select count(*) from raw.orders") == [(3,)]


def test_types_and_metadata_columns(tmp_path: Path, landing: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    load_raw(warehouse, landing, RUNS)
    types = dict(
        _rows(
            warehouse,
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'raw' and table_name in ('orders', 'fx_rates')",
        )
    )
    assert types["total"] == "DECIMAL(12,2)"
    assert types["rate"] == "DECIMAL(38,18)"
    assert types["created_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["_run_id"] == "VARCHAR"
    assert types["_loaded_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["coupon"] == "VARCHAR"  # extra source column is carried
    assert _rows(warehouse, "select distinct _run_id from raw.orders") == [("2024-01-15",)]
    assert _rows(warehouse, "select rate from raw.fx_rates where currency = 'EUR'") == [
        (Decimal("0.921300000000000000"),)
    ]


def test_missing_run_dir_names_it(tmp_path: Path, landing: Path) -> None:
    with pytest.raises(LoadError, match=r"source_db/orders.*run=2024-01-16"):
        load_raw(tmp_path / "wh.duckdb", landing, {"source_db/orders": "2024-01-16"})
    assert not (tmp_path / "wh.duckdb").exists()


def test_empty_run_dir_is_an_error(tmp_path: Path, landing: Path) -> None:
    (landing / "source_db" / "users" / "run=2024-01-15").mkdir(parents=True)
    with pytest.raises(LoadError, match=r"source_db/users.*no \.parquet file"):
        load_raw(tmp_path / "wh.duckdb", landing, {"source_db/users": "2024-01-15"})


@pytest.mark.parametrize(
    "runs",
    [
        {"source_db/secrets": "2024-01-15"},
        {"orders": "2024-01-15"},
        {"source_db/orders": "../../etc"},
        {},
    ],
)
def test_rejects_unknown_tables_and_bad_run_ids(tmp_path: Path, landing: Path, runs) -> None:
    with pytest.raises(LoadError):
        load_raw(tmp_path / "wh.duckdb", landing, runs)


def test_failure_midway_leaves_previous_raw_intact(tmp_path: Path, landing: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    load_raw(warehouse, landing, RUNS)
    # next run: orders are fine (and differ), fx_rates has a corrupt file
    _write(landing, "source_db", "orders", "2024-01-16", [_orders([1, 2, 3, 4, 5])])
    bad = landing / "payments_api" / "fx_rates" / "run=2024-01-16"
    bad.mkdir(parents=True)
    (bad / "part-00000.parquet").write_bytes(b"this is not parquet")
    runs = {"source_db/orders": "2024-01-16", "payments_api/fx_rates": "2024-01-16"}
    with pytest.raises(LoadError, match=r"raw\.fx_rates.*run=2024-01-16"):
        load_raw(warehouse, landing, runs)
    assert _rows(warehouse, "select count(*), min(_run_id) from raw.orders") == [(3, "2024-01-15")]
    assert _rows(warehouse, "select count(*) from raw.fx_rates") == [(2,)]
