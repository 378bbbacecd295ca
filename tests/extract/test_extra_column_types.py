"""Extra source columns of types a database may hold beyond the contract's: landed
exactly and carried into raw, never stopping the night. MySQL/MariaDB's DOUBLE (its
driver hands the values as Decimal) lands as float64; a DECIMAL wider than decimal128's
38 digits lands as its exact text, on the generic reader and on PostgreSQL's COPY path
alike. Real MariaDB and PostgreSQL sources, DuckDB warehouse."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from demo.generator import generate
from extract.db_extract import ExtractPlan, extract_tables
from extract.landing import run_dir
from warehouse.load import SourceLoadPlan, load_source_db

END = date(2026, 11, 20)
WIDE = "123456789012345678901234567890.123456789012345678901234567890"  # 60 digits


@pytest.fixture(params=["mariadb", "postgresql"])
def source(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue(
        f"{'pg' if request.param == 'postgresql' else 'mariadb'}_database"
    )
    generate(url, seed=3, days=2, end_date=END, orders_per_day=10, if_exists="replace")
    double = "double" if request.param == "mariadb" else "double precision"
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for column, type_ in (
                ("weight_kg", double),
                ("ratio", "real"),
                ("wide", "decimal(65, 30)"),
            ):
                conn.exec_driver_sql(f"alter table products add column {column} {type_}")
            conn.execute(
                sa.text("update products set weight_kg = :w, ratio = :r, wide = :d where id = 1"),
                {"w": 0.333333333, "r": 1.5, "d": Decimal(WIDE)},
            )
    finally:
        engine.dispose()
    return url


def test_double_and_wide_decimal_extra_columns_land_exactly(source: str, tmp_path: Path) -> None:
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    extract_tables(source, ExtractPlan(run_id="r1", landing_root=landing, warehouse_path=warehouse))
    landed = pq.read_table(run_dir(landing, "source_db", "products", "r1"))
    assert landed.schema.field("weight_kg").type == pa.float64()
    assert landed.schema.field("ratio").type == pa.float64()
    assert landed.schema.field("wide").type == pa.string()
    row = next(r for r in landed.to_pylist() if r["id"] == 1)
    assert row["weight_kg"] == 0.333333333 and row["ratio"] == 1.5
    assert row["wide"] == WIDE
    assert sum(r["wide"] is None for r in landed.to_pylist()) == landed.num_rows - 1

    load_source_db(landing, SourceLoadPlan("r1", "UTC", warehouse_path=warehouse))
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        got = con.execute("select weight_kg, wide from raw.products where id = 1").fetchone()
    finally:
        con.close()
    assert got == (0.333333333, WIDE)
