"""End-to-end: the dbt project on a real DuckDB file built from a hand-made raw dataset."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from warehouse.dbt_runner import (
    BuildPlan,
    DbtCall,
    DbtError,
    DbtResult,
    dbt_build,
    dbt_executable,
    run_dbt,
    stable_warehouse_path,
)
from warehouse.dev_copy import copy_published
from warehouse.publish import build_path_for

PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"

RAW_SQL = """
SET TimeZone = 'UTC';
CREATE SCHEMA IF NOT EXISTS raw;
CREATE OR REPLACE TABLE raw.users (
    id BIGINT, email VARCHAR, full_name VARCHAR, region VARCHAR,
    created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ, favourite_colour VARCHAR,
    _run_id VARCHAR, _loaded_at TIMESTAMPTZ);
INSERT INTO raw.users VALUES
    (1, 'a@x', 'A', 'EU',  '2024-01-01 00:00:00+00', '2024-01-01 00:00:00+00', 'red', 'r1', now()),
    (2, 'b@x', 'B', NULL,  '2024-01-01 00:00:00+00', '2024-01-01 00:00:00+00', NULL, 'r1', now()),
    (3, 'c@x', 'C', '   ', '2024-01-01 00:00:00+00', '2024-01-01 00:00:00+00', NULL, 'r1', now()),
    (4, 'd@x', 'D', 'US',  '2024-01-01 00:00:00+00', '2024-01-01 00:00:00+00', NULL, 'r1', now());

CREATE OR REPLACE TABLE raw.products (
    id BIGINT, sku VARCHAR, name VARCHAR, category VARCHAR, price DECIMAL(12,2),
    updated_at TIMESTAMPTZ, _run_id VARCHAR, _loaded_at TIMESTAMPTZ);
INSERT INTO raw.products VALUES
    (10, 'S10', 'Book',  'books', 5.00, '2024-01-01 00:00:00+00', 'r1', now()),
    (11, 'S11', 'Toy',   'toys',  9.99, '2024-01-01 00:00:00+00', 'r1', now()),
    (12, 'S12', 'Alpha', 'alpha', 1.00, '2024-01-01 00:00:00+00', 'r1', now()),
    (13, 'S13', 'Zeta',  'Zeta',  1.00, '2024-01-01 00:00:00+00', 'r1', now());

CREATE OR REPLACE TABLE raw.orders (
    id BIGINT, user_id BIGINT, status VARCHAR, currency VARCHAR, total DECIMAL(12,2),
    created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ, _run_id VARCHAR, _loaded_at TIMESTAMPTZ);
INSERT INTO raw.orders VALUES
    (1,  1,  'paid',      'EUR', 10.00,  '2024-01-15 15:00:00+00', '2024-01-15 15:00:00+00', 'r1', now()),
    (2,  1,  'cancelled', 'USD', 100.00, '2024-01-15 16:00:00+00', '2024-01-15 16:00:00+00', 'r1', now()),
    (3,  2,  'delivered', 'USD', 20.00,  '2024-01-15 17:00:00+00', '2024-01-15 17:00:00+00', 'r1', now()),
    (4,  3,  'shipped',   'GBP', 1.00,   '2024-01-15 18:00:00+00', '2024-01-15 18:00:00+00', 'r1', now()),
    (5,  4,  'paid',      'USD', 7.50,   '2024-01-16 03:00:00+00', '2024-01-16 03:00:00+00', 'r1', now()),
    (6,  4,  'paid',      'USD', 2.00,   '2024-01-16 12:00:00+00', '2024-01-16 12:00:00+00', 'r1', now()),
    (7,  99, 'pending',   'EUR', 0.01,   '2024-01-16 12:00:00+00', '2024-01-16 12:00:00+00', 'r1', now()),
    (8,  1,  'cancelled', 'GBP', 3.00,   '2024-01-16 12:00:00+00', '2024-01-16 12:00:00+00', 'r1', now()),
    (9,  1,  'paid',      'CHF', 0.01,   '2024-01-16 13:00:00+00', '2024-01-16 13:00:00+00', 'r1', now()),
    (10, 1,  'paid',      'CHF', 0.03,   '2024-01-16 14:00:00+00', '2024-01-16 14:00:00+00', 'r1', now()),
    (11, 1,  'refunded',  'CHF', 0.05,   '2024-01-16 15:00:00+00', '2024-01-16 15:00:00+00', 'r1', now());

CREATE OR REPLACE TABLE raw.order_items (
    id BIGINT, order_id BIGINT, product_id BIGINT, quantity BIGINT, unit_price DECIMAL(12,2),
    updated_at TIMESTAMPTZ, _run_id VARCHAR, _loaded_at TIMESTAMPTZ);
INSERT INTO raw.order_items VALUES
    (100, 1, 10, 2, 5.00, '2024-01-15 15:00:00+00', 'r1', now()),
    (101, 1, 11, 1, 9.99, '2024-01-15 15:00:00+00', 'r1', now()),
    (102, 5, 12, 1, 3.75, '2024-01-16 03:00:00+00', 'r1', now()),
    (103, 5, 13, 3, 1.25, '2024-01-16 03:00:00+00', 'r1', now()),
    (104, 6, 99, 1, 2.00, '2024-01-16 12:00:00+00', 'r1', now());

CREATE OR REPLACE TABLE raw.payments (
    id VARCHAR, order_id BIGINT, amount DECIMAL(18,2), currency VARCHAR, status VARCHAR,
    method VARCHAR, created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ,
    _run_id VARCHAR, _loaded_at TIMESTAMPTZ);
INSERT INTO raw.payments VALUES
    ('p1', 1, 10.00, 'EUR', 'succeeded', 'card', '2024-01-15 15:01:00+00',
     '2024-01-15 15:01:00+00', 'r1', now()),
    ('p7', 2, 5.00, 'USD', 'succeeded', 'card', '2024-01-16 09:00:00+00',
     '2024-01-16 09:00:00+00', 'r1', now()),
    ('p8', 3, 7.00, 'USD', 'succeeded', 'card', '2024-01-16 09:30:00+00',
     '2024-01-16 09:30:00+00', 'r1', now());

CREATE OR REPLACE TABLE raw.fx_rates (
    rate_date DATE, base VARCHAR, currency VARCHAR, rate DECIMAL(38,18),
    _run_id VARCHAR, _loaded_at TIMESTAMPTZ);
INSERT INTO raw.fx_rates VALUES
    ('2024-01-15', 'USD', 'USD', 1, 'r1', now()),
    ('2024-01-15', 'USD', 'EUR', 0.9213, 'r1', now()),
    ('2024-01-15', 'USD', 'GBP', 0.8, 'r1', now()),
    ('2024-01-16', 'USD', 'USD', 1, 'r1', now()),
    ('2024-01-16', 'USD', 'EUR', 0.9213, 'r1', now()),
    ('2024-01-16', 'USD', 'CHF', 2, 'r1', now());
"""

D15, D16 = dt.date(2024, 1, 15), dt.date(2024, 1, 16)

# Worked by hand, REPORT_TZ=America/New_York:
# 01-15 EU: #1 10.00 EUR / 0.9213 = 10.854 -> 1085c; #2 cancelled.
# 01-15 unknown: #3 NULL region 20.00 USD -> 2000c; #4 blank region 1.00 GBP / 0.8 -> 125c.
# 01-15 US: #5 created 01-16 03:00 UTC = 01-15 22:00 EST -> 750c.
# 01-16 US: #6 200c.  01-16 unknown: #7 missing user, 0.01 EUR -> 1.085c -> 1c.
# 01-16 EU: #9/#10/#11 CHF at 2: 0.5c -> 1, 1.5c -> 2, 2.5c -> 3 (half-up) = 6c; #8 cancelled
#           GBP with no rate that day does not fail the build.
EXPECTED_NEW_YORK = [
    (D15, "EU", Decimal("10.85"), 1),
    (D15, "US", Decimal("7.50"), 1),
    (D15, "unknown", Decimal("21.25"), 2),
    (D16, "EU", Decimal("0.06"), 3),
    (D16, "US", Decimal("2.00"), 1),
    (D16, "unknown", Decimal("0.01"), 1),
]
# REPORT_TZ=UTC, through_date=2024-01-15: #5 moves to 01-16, which is cut off.
EXPECTED_UTC_THROUGH_15 = [
    (D15, "EU", Decimal("10.85"), 1),
    (D15, "unknown", Decimal("21.25"), 2),
]


def _make_raw(path: Path, extra_sql: str = "") -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute(RAW_SQL + extra_sql)
    finally:
        con.close()


def _query(path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


SUMMARY_SQL = "select * from analytics.sales_summary order by date, region"


@pytest.fixture(scope="module")
def new_york_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DbtResult]:
    """A plain `dbt build` (as an analytics engineer runs it): (warehouse, result)."""
    path = tmp_path_factory.mktemp("wh") / "warehouse.duckdb"
    _make_raw(path)
    result = dbt_build(path, BuildPlan("America/New_York"))
    assert result.returncode == 0
    assert result.nodes and not result.failed
    return path, result


@pytest.fixture(scope="module")
def built_new_york(new_york_build: tuple[Path, DbtResult]) -> Path:
    return new_york_build[0]


def test_sales_summary_matches_hand_computed(built_new_york: Path) -> None:
    assert _query(built_new_york, SUMMARY_SQL) == EXPECTED_NEW_YORK


def test_sales_summary_column_types(built_new_york: Path) -> None:
    rows = _query(
        built_new_york,
        "select column_name, data_type from information_schema.columns "
        "where table_schema = 'analytics' and table_name = 'sales_summary' "
        "order by ordinal_position",
    )
    assert rows == [
        ("date", "DATE"),
        ("region", "VARCHAR"),
        ("total_sales_usd", "DECIMAL(18,2)"),
        ("order_count", "BIGINT"),
    ]


def test_schemas_are_used_as_named(built_new_york: Path) -> None:
    rows = _query(
        built_new_york,
        "select table_schema, table_name from information_schema.tables "
        "where table_schema not in ('raw') order by 1, 2",
    )
    schemas = {s for s, _ in rows}
    assert {"staging", "intermediate", "marts", "analytics"} <= schemas
    assert ("analytics", "sales_summary") in rows
    assert [t for s, t in rows if s == "analytics"] == ["sales_summary"]


def test_order_categories(built_new_york: Path) -> None:
    rows = dict(_query(built_new_york, "select order_id, category from marts.fct_orders"))
    assert rows[1] == "books"  # 2 * 5.00 beats 1 * 9.99
    assert rows[3] == "uncategorized"  # no items
    assert rows[5] == "Zeta"  # 3.75 tie: 'Zeta' < 'alpha' in byte order
    assert rows[6] == "uncategorized"  # product missing


def test_fct_orders_flags_and_cents(built_new_york: Path) -> None:
    rows = {
        r[0]: r[1:]
        for r in _query(
            built_new_york,
            "select order_id, is_counted, usd_cents, region, business_date from marts.fct_orders",
        )
    }
    assert rows[2][0] is False and rows[8][0] is False
    assert rows[8][1] is None  # cancelled, no GBP rate that day: not converted, not fatal
    assert rows[1][1] == 1085
    assert [rows[i][1] for i in (9, 10, 11)] == [1, 2, 3]
    assert rows[7][2] == "unknown"
    assert rows[5][3] == D15


def test_plain_dbt_build_in_the_project_dir_builds_a_copy_never_the_published_file(
    tmp_path: Path,
) -> None:
    """`make dev-warehouse` then `cd dbt_project && dbt build` with nothing set (a new user
    after `make demo`) builds ../data/dev.duckdb, the same marts as the nightly's runner
    gives, and leaves the published file and its kept version (a hard link) as they were."""
    project = tmp_path / "dbt_project"
    shutil.copytree(PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs"))
    data = tmp_path / "data"
    data.mkdir()
    published, by_runner = data / "warehouse.duckdb", tmp_path / "runner.duckdb"
    _make_raw(published)
    _make_raw(by_runner)
    kept = data / "kept-version.duckdb"
    os.link(published, kept)
    before = published.read_bytes()

    dev = copy_published(published, data / "dev.duckdb")
    assert dev.stat().st_ino != published.stat().st_ino
    unset = ("WAREHOUSE_PATH", "DBT_PROFILES_DIR", "DBT_PROJECT_DIR", "DBT_TARGET_PATH")
    env = {k: v for k, v in os.environ.items() if k not in unset and not k.startswith("DBT_")}
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env["WAREHOUSE_PATH"] = str(published)  # the published file's setting: not dbt's target
    done = subprocess.run(
        [str(dbt_executable()), "build"], cwd=project, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "PASS=" in done.stdout and "ERROR=0" in done.stdout
    dbt_build(by_runner, BuildPlan("UTC"))
    summary = _query(dev, SUMMARY_SQL)
    assert summary and summary == _query(by_runner, SUMMARY_SQL)
    assert published.read_bytes() == before == kept.read_bytes()
    assert not _query(
        published, "select * from information_schema.schemata where schema_name = 'marts'"
    )


def test_utc_and_through_date(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    _make_raw(path)
    dbt_build(path, BuildPlan("UTC", "2024-01-15"))
    assert _query(path, SUMMARY_SQL) == EXPECTED_UTC_THROUGH_15


def test_missing_fx_rate_fails_build_naming_currency(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    _make_raw(
        path,
        "INSERT INTO raw.orders VALUES (12, 1, 'paid', 'SEK', 5.00, '2024-01-16 12:00:00+00',"
        " '2024-01-16 12:00:00+00', 'r1', now());",
    )
    with pytest.raises(DbtError) as excinfo:
        dbt_build(path, BuildPlan("UTC"))
    message = str(excinfo.value)
    assert (
        "dbt test assert_fx_rate_exists_for_every_counted_order failed: 1 row, e.g. "
        "currency=SEK business_date=2024-01-16 order_count=1 example_order_id=12"
    ) in message
    fx = next(n for n in excinfo.value.result.nodes if n.name.startswith("assert_fx_rate"))
    assert (fx.status, fx.failures) == ("fail", 1)  # a failing test, not an aborted query
    assert fx.failing_rows == [
        {
            "currency": "SEK",
            "business_date": dt.date(2024, 1, 16),
            "order_count": 1,
            "example_order_id": 12,
        }
    ]
    # dbt stored the rows in ops (the build's), not in a published analytics table
    assert fx.relation_name == (
        '"warehouse"."ops"."dbt_test__assert_fx_rate_exists_for_every_counted_order"'
    )
    statuses = {n.name: n.status for n in excinfo.value.result.nodes}
    assert statuses["sales_summary"] == "skipped"
    # the published table was never built from the bad data
    tables = _query(
        path, "select table_name from information_schema.tables where table_schema='analytics'"
    )
    assert tables == []


def test_select_matching_nothing_fails(built_new_york: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.duckdb"
    shutil.copy(built_new_york, copy)
    with pytest.raises(DbtError, match="matched no node"):
        dbt_build(copy, BuildPlan("UTC", select="no_such_model_anywhere"))


def test_parse_for_postgres_target() -> None:
    env = {
        "DBT_POSTGRES_USER": "dummy",
        "DBT_POSTGRES_PASSWORD": "dummy",
        "DBT_POSTGRES_DBNAME": "dummy",
        "DBT_POSTGRES_SCHEMA": "dummy",
        "DBT_DUCKDB_PATH": os.devnull,
    }
    result = run_dbt(["parse"], DbtCall(project_dir=PROJECT_DIR, target="postgres", env=env))
    assert result.returncode == 0


def test_build_on_real_postgres(pg_database: str, tmp_path: Path) -> None:
    """The postgres dispatches (business day, cents, byte order) give the same table."""
    import sqlalchemy as sa

    url = sa.make_url(pg_database)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            raw_sql = RAW_SQL.replace("CREATE OR REPLACE TABLE", "CREATE TABLE")
            for statement in raw_sql.split(";"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
        env = {
            "DBT_POSTGRES_HOST": url.host or "127.0.0.1",
            "DBT_POSTGRES_PORT": str(url.port or 5432),
            "DBT_POSTGRES_USER": url.username or "postgres",
            "DBT_POSTGRES_PASSWORD": url.password or "",
            "DBT_POSTGRES_DBNAME": url.database or "",
            "DBT_POSTGRES_SCHEMA": "public",
            "DBT_DUCKDB_PATH": os.devnull,
        }
        call = DbtCall(
            project_dir=PROJECT_DIR,
            target="postgres",
            vars={"report_tz": "America/New_York", "through_date": None},
            env=env,
            target_dir=tmp_path,  # its own run_results.json: other dbt runs share target/
        )
        result = run_dbt(["build"], call)
        assert result.nodes and not result.failed
        with engine.connect() as conn:
            rows = [tuple(r) for r in conn.exec_driver_sql(SUMMARY_SQL)]
        assert rows == EXPECTED_NEW_YORK
    finally:
        engine.dispose()


# --- incremental fct_orders (var run_id) -------------------------------------------------

MARTS = (
    "marts.fct_orders",
    "marts.dim_users",
    "marts.fct_order_items",
    "marts.fct_payments",
    "analytics.sales_summary",
)

# Changes of "run r2", and the days the loader would record for them (warehouse/load.py):
# order 3 moves 01-15 -> 01-16 (both days), order 6 is cancelled (01-16), item 103 deleted
# (order 5: 01-16 in UTC), user 4 moves to EU (days of orders 5, 6), a new order on 01-17.
# NOT recorded by the loader: the EUR rate of 01-15 changes, and the CHF rate of 01-17
# arrives only now (fct_orders must notice both itself).
CHANGES_R2 = """
SET TimeZone = 'UTC';
CREATE SCHEMA IF NOT EXISTS ops;
CREATE TABLE IF NOT EXISTS ops.restated_days (
    run_id VARCHAR NOT NULL, business_date DATE NOT NULL, reason VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS ops.deleted_rows (
    run_id VARCHAR NOT NULL, table_name VARCHAR NOT NULL, key VARCHAR NOT NULL,
    deleted_at TIMESTAMPTZ NOT NULL);
INSERT INTO ops.deleted_rows VALUES ('r2', 'order_items', '103', now());
UPDATE raw.orders SET created_at = '2024-01-16 17:00:00+00' WHERE id = 3;
UPDATE raw.orders SET status = 'cancelled' WHERE id = 6;
DELETE FROM raw.order_items WHERE id = 103;
UPDATE raw.users SET region = 'EU' WHERE id = 4;
INSERT INTO raw.orders VALUES
    (12, 2, 'paid', 'USD', 4.00, '2024-01-17 10:00:00+00', '2024-01-17 10:00:00+00', 'r2', now());
UPDATE raw.fx_rates SET rate = 0.5 WHERE rate_date = '2024-01-15' AND currency = 'EUR';
INSERT INTO raw.fx_rates VALUES ('2024-01-17', 'USD', 'USD', 1, 'r2', now());
INSERT INTO ops.restated_days VALUES
    ('r2', '2024-01-15', 'order_changed'), ('r2', '2024-01-16', 'order_changed'),
    ('r2', '2024-01-16', 'item_deleted'), ('r2', '2024-01-16', 'user_region'),
    ('r2', '2024-01-17', 'order_new'), ('r1', '2024-01-10', 'order_new');
"""


def _marts(path: Path) -> dict[str, list[tuple]]:
    return {t: _query(path, f"select * from {t} order by all") for t in MARTS}


@pytest.fixture
def incremental_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A warehouse built in full (no run_id), changed by run r2: (incremental, full) copies."""
    path = tmp_path / "warehouse.duckdb"
    _make_raw(
        path,
        "CREATE SCHEMA ops; CREATE TABLE ops.restated_days "
        "(run_id VARCHAR, business_date DATE, reason VARCHAR);",
    )
    dbt_build(path, BuildPlan("UTC", run_id="r1"))  # the table does not exist yet: built in full
    con = duckdb.connect(str(path))
    try:
        con.execute(CHANGES_R2)
    finally:
        con.close()
    full = tmp_path / "full.duckdb"
    shutil.copy(path, full)
    return path, full


def test_incremental_equals_full_rebuild(incremental_pair: tuple[Path, Path]) -> None:
    incremental, full = incremental_pair
    before = dict(_query(incremental, "select order_id, updated_at from marts.fct_orders"))
    result = dbt_build(incremental, BuildPlan("UTC", run_id="r2"))
    dbt_build(full, BuildPlan("UTC"))  # no run_id: rebuilt in full
    assert _marts(incremental) == _marts(full)
    fct = {
        r[0]: r[1:]
        for r in _query(
            incremental,
            "select order_id, business_date, region, "
            "category, usd_cents, fx_rate from marts.fct_orders",
        )
    }
    assert fct[3][0] == D16  # moved
    assert fct[5][1:3] == ("EU", "alpha")  # region move; item 103 (Zeta) deleted
    assert fct[1][3] == 2000 and fct[1][4] == Decimal("0.5")  # EUR rate of 01-15 changed
    assert fct[12][0] == dt.date(2024, 1, 17) and fct[12][3] == 400  # rate arrived late
    assert before  # the table existed: the rows of the restated days were replaced
    assert result.statuses["model.nightshift.fct_orders"] == "success"


# Run r3 after r2: product 11 becomes 'garden' (item 101, order 1), product 12 is deleted
# (item 102, order 5), item 100 changes quantity, item 104 is deleted, order 6 gets a new
# item: days 01-15 and 01-16. The loader records the deleted keys in ops.deleted_rows.
CHANGES_R3 = """
UPDATE raw.products SET category = 'garden', _run_id = 'r3' WHERE id = 11;
DELETE FROM raw.products WHERE id = 12;
INSERT INTO ops.deleted_rows VALUES
    ('r3', 'products', '12', now()), ('r3', 'order_items', '104', now()),
    ('r3', 'payments', 'p8', now());
UPDATE raw.order_items SET quantity = 3, _run_id = 'r3' WHERE id = 100;
DELETE FROM raw.order_items WHERE id = 104;
INSERT INTO raw.order_items VALUES
    (105, 6, 13, 2, 1.50, '2024-01-16 12:00:00+00', 'r3', now());
UPDATE raw.payments SET status = 'refunded', updated_at = '2024-01-17 08:00:00+00',
    _run_id = 'r3' WHERE id = 'p7';
DELETE FROM raw.payments WHERE id = 'p8';
INSERT INTO raw.payments VALUES
    ('p9', 12, 4.00, 'USD', 'succeeded', 'card', '2024-01-17 10:00:00+00',
     '2024-01-17 10:00:00+00', 'r3', now());
INSERT INTO ops.restated_days VALUES
    ('r3', '2024-01-15', 'product_category'), ('r3', '2024-01-15', 'items_changed'),
    ('r3', '2024-01-16', 'item_deleted'), ('r3', '2024-01-16', 'items_changed');
"""


def test_incremental_order_items_equal_full_rebuild(incremental_pair: tuple[Path, Path]) -> None:
    """fct_order_items rebuilds the items the run loaded and those whose product's
    category changed, drops deleted items, and keeps the rest; fct_payments the payments
    the run loaded, dropping deleted ones: both equal to a full rebuild."""
    incremental, full = incremental_pair
    dbt_build(incremental, BuildPlan("UTC", run_id="r2"))
    con = duckdb.connect(str(incremental))
    try:
        con.execute(CHANGES_R3)
    finally:
        con.close()
    shutil.copy(incremental, full)
    result = dbt_build(incremental, BuildPlan("UTC", run_id="r3"))
    compiled = json.loads(result.run_results_path.read_text())["results"]
    (items_sql,) = [
        r["compiled_code"] for r in compiled if r["unique_id"].endswith(".fct_order_items")
    ]
    assert "where run_id = 'r3'" in items_sql  # built incrementally
    (payments_sql,) = [
        r["compiled_code"] for r in compiled if r["unique_id"].endswith(".fct_payments")
    ]
    assert "where run_id = 'r3'" in payments_sql
    dbt_build(full, BuildPlan("UTC"))
    assert _marts(incremental) == _marts(full)
    rows = {
        r[0]: r[1:]
        for r in _query(
            incremental,
            "select order_item_id, quantity, line_amount, category from marts.fct_order_items",
        )
    }
    assert rows[100] == (3, Decimal("15.00"), "books")
    assert rows[101][2] == "garden" and rows[105][2] == "Zeta" and 104 not in rows
    assert rows[102][2] == "uncategorized"  # its product was deleted
    payments = dict(_query(incremental, "select payment_id, status from marts.fct_payments"))
    assert payments == {"p1": "succeeded", "p7": "refunded", "p9": "succeeded"}  # p8 deleted


def test_incremental_deletes_follow_the_loaders_record(
    incremental_pair: tuple[Path, Path],
) -> None:
    """The incremental marts delete the keys ops.deleted_rows records for the run, and only
    those: a row gone from raw without a record stays (proof that the delete follows the
    record, not a scan of the whole key set), until a full rebuild."""
    incremental, full = incremental_pair
    dbt_build(incremental, BuildPlan("UTC", run_id="r2"))
    _run_sql(
        incremental,
        "DELETE FROM raw.order_items WHERE id IN (100, 101); "
        "DELETE FROM raw.payments WHERE id IN ('p1', 'p7'); "
        "INSERT INTO ops.deleted_rows VALUES ('r3', 'order_items', '100', now()), "
        "('r3', 'payments', 'p7', now()), ('r2', 'order_items', '101', now())",
    )
    dbt_build(incremental, BuildPlan("UTC", run_id="r3"))
    items = [r[0] for r in _query(incremental, "select order_item_id from marts.fct_order_items")]
    payments = [r[0] for r in _query(incremental, "select payment_id from marts.fct_payments")]
    # 101 was recorded for another run; 'p1' was never recorded
    assert sorted(items) == [101, 102, 104] and sorted(payments) == ["p1", "p8"]
    dbt_build(incremental, BuildPlan("UTC", run_id="r3", full_refresh=True))
    items = [r[0] for r in _query(incremental, "select order_item_id from marts.fct_order_items")]
    payments = [r[0] for r in _query(incremental, "select payment_id from marts.fct_payments")]
    assert sorted(items) == [102, 104] and sorted(payments) == ["p8"]


def test_incremental_touches_only_restated_days(incremental_pair: tuple[Path, Path]) -> None:
    """A change the run did not record as a restated day is not picked up (proof that the
    model is incremental), until a full rebuild."""
    incremental, _ = incremental_pair
    con = duckdb.connect(str(incremental))
    try:  # no changes at all for run r3, except an unrecorded status change on 01-16
        con.execute("UPDATE raw.orders SET status = 'refunded' WHERE id = 9")
    finally:
        con.close()
    dbt_build(incremental, BuildPlan("UTC", run_id="r3"))
    status = _query(incremental, "select status from marts.fct_orders where order_id = 9")
    assert status == [("paid",)]
    dbt_build(incremental, BuildPlan("UTC", run_id="r3", full_refresh=True))
    status = _query(incremental, "select status from marts.fct_orders where order_id = 9")
    assert status == [("refunded",)]


def test_report_tz_change_restates_every_moved_day(incremental_pair: tuple[Path, Path]) -> None:
    """r2's build in UTC, then r2 built again in New York (a rerun after REPORT_TZ
    changed): every day whose orders move under the new zone is restated, as a full
    rebuild in New York. (A build runs with the run id its load recorded its deletes
    under.)"""
    incremental, full = incremental_pair
    dbt_build(incremental, BuildPlan("UTC", run_id="r2"))
    dbt_build(incremental, BuildPlan("America/New_York", run_id="r2"))
    dbt_build(full, BuildPlan("America/New_York"))
    assert _marts(incremental) == _marts(full)


# The orders behind r2's restated days, as the loader records them (old and new day).
RESTATED_ORDERS_R2 = """
CREATE TABLE ops.restated_orders (
    run_id VARCHAR NOT NULL, order_id BIGINT NOT NULL, business_date DATE NOT NULL);
INSERT INTO ops.restated_orders VALUES
    ('r2', 3, '2024-01-15'), ('r2', 3, '2024-01-16'), ('r2', 5, '2024-01-16'),
    ('r2', 6, '2024-01-16'), ('r2', 12, '2024-01-17');
"""


def _run_sql(path: Path, sql: str) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute(sql)
    finally:
        con.close()


def test_restated_orders_rebuild_orders_not_days(incremental_pair: tuple[Path, Path]) -> None:
    """With ops.restated_orders, fct_orders rebuilds the run's orders, not their whole
    days: a change on a restated day that no recorded order explains is not picked up,
    and the marts equal a full rebuild; a day recorded without its orders (a first load,
    an FX revision) is rebuilt whole."""
    incremental, full = incremental_pair
    _run_sql(incremental, RESTATED_ORDERS_R2)
    _run_sql(full, RESTATED_ORDERS_R2)
    dbt_build(incremental, BuildPlan("UTC", run_id="r2"))
    dbt_build(full, BuildPlan("UTC"))
    assert _marts(incremental) == _marts(full)

    # order 9 (01-16, a day r2 restated) changes without being recorded: not rebuilt
    _run_sql(incremental, "UPDATE raw.orders SET status = 'refunded' WHERE id = 9")
    _run_sql(incremental, "INSERT INTO ops.restated_orders VALUES ('r3', 6, '2024-01-16')")
    _run_sql(
        incremental, "INSERT INTO ops.restated_days VALUES ('r3', '2024-01-16', 'order_changed')"
    )
    r3 = dbt_build(incremental, BuildPlan("UTC", run_id="r3"))
    assert _query(incremental, "select status from marts.fct_orders where order_id = 9") == [
        ("paid",)
    ]
    # its tests check the orders it re-inserted: order 6, not the other orders of 01-16
    assert _tested_orders(incremental, r3) == [6]
    # a recorded day no restated order of the run explains is rebuilt whole
    _run_sql(
        incremental, "INSERT INTO ops.restated_days VALUES ('r4', '2024-01-16', 'order_changed')"
    )
    r4 = dbt_build(incremental, BuildPlan("UTC", run_id="r4"))
    assert _query(incremental, "select status from marts.fct_orders where order_id = 9") == [
        ("refunded",)
    ]
    day = _query(
        incremental,
        "select order_id from marts.fct_orders where business_date = '2024-01-16' order by 1",
    )
    assert len(day) > 1 and _tested_orders(incremental, r4) == [r[0] for r in day]


def test_stale_rows_are_deleted_after_the_select_in_the_main_statement(
    incremental_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """The incremental strategy (macros/delete_stale_insert.sql) deletes the stale rows in
    the one statement that then does delete+insert, after the SELECT has read the table:
    the SELECT must treat a day whose stored orders are all restated as the deletes leave
    it, empty, and rebuild it whole. 01-15 keeps orders 1 and 2 (both restated by r3) and
    has lost order 4's row: only a whole-day rebuild brings order 4 back, as a full
    rebuild has it."""
    incremental, full = incremental_pair
    _run_sql(incremental, RESTATED_ORDERS_R2)
    dbt_build(incremental, BuildPlan("UTC", run_id="r2"))
    _run_sql(
        incremental,
        "DELETE FROM marts.fct_orders WHERE order_id = 4; "
        "UPDATE raw.orders SET status = 'refunded' WHERE id = 1; "
        "UPDATE raw.orders SET status = 'paid' WHERE id = 2; "
        "INSERT INTO ops.restated_orders VALUES ('r3', 1, '2024-01-15'), "
        "('r3', 2, '2024-01-15'); "
        "INSERT INTO ops.restated_days VALUES ('r3', '2024-01-15', 'order_changed')",
    )
    shutil.copy(incremental, full)
    target_dir = tmp_path / "target"
    dbt_build(incremental, BuildPlan("UTC", run_id="r3", target_dir=target_dir))
    dbt_build(full, BuildPlan("UTC"))
    assert _marts(incremental) == _marts(full)
    day = _query(
        incremental,
        "select order_id, status from marts.fct_orders "
        "where business_date = '2024-01-15' order by 1",
    )
    assert day == [(1, "refunded"), (2, "paid"), (4, "shipped")]
    # the statement dbt ran as the model's "main": the stale deletes, then delete+insert
    main = (target_dir / "run" / "nightshift" / "models" / "marts" / "fct_orders.sql").read_text()
    stale_days = main.index("where business_date in (")
    stale_orders = main.index("where order_id in (", stale_days)
    assert stale_orders < main.index("insert into", stale_orders)
    assert "'r3'" in main[stale_days:stale_orders]


def _tested_orders(path: Path, result: DbtResult) -> list[int]:
    """The order ids `not_null_fct_orders_order_id` read in this build (its `where` slice)."""
    compiled = {
        r["unique_id"].split(".")[2]: r["compiled_code"]
        for r in json.loads(result.run_results_path.read_text())["results"]
    }["not_null_fct_orders_order_id"]
    sliced = re.search(r"from (\(select \* from .*\)) dbt_subquery", compiled, re.S)
    assert sliced, compiled
    return [r[0] for r in _query(path, f"select order_id from {sliced.group(1)} order by 1")]


def test_users_snapshot_keeps_history(incremental_pair: tuple[Path, Path]) -> None:
    incremental, _ = incremental_pair
    dbt_build(incremental, BuildPlan("UTC", run_id="r2"))
    rows = _query(
        incremental,
        "select region, dbt_valid_to is null from snapshots.users_snapshot "
        "where user_id = 4 order by dbt_valid_from",
    )
    # the region change of r2 came with no updated_at change here: timestamp strategy
    # versions on updated_at, so a new version needs a newer updated_at
    assert rows == [("US", True)]
    con = duckdb.connect(str(incremental))
    try:
        con.execute(
            "UPDATE raw.users SET region = 'APAC', updated_at = '2024-02-01 00:00:00+00' "
            "WHERE id = 4"
        )
    finally:
        con.close()
    dbt_build(incremental, BuildPlan("UTC", run_id="r3"))
    rows = _query(
        incremental,
        "select region, dbt_valid_to is null from snapshots.users_snapshot "
        "where user_id = 4 order by dbt_valid_from",
    )
    assert rows == [("US", False), ("APAC", True)]


def test_run_results_are_kept_and_summarised(
    built_new_york: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    path = built_new_york.with_name("summary.duckdb")
    shutil.copy(built_new_york, path)
    with caplog.at_level(logging.INFO, logger="warehouse.dbt_runner"):
        result = dbt_build(
            path, BuildPlan("America/New_York", run_id="2024-01-16", full_refresh=True)
        )
    target = Path(os.environ.get("DBT_TARGET_PATH") or PROJECT_DIR / "target")
    kept = target / "run_results-2024-01-16.json"
    assert result.run_results_path == kept and kept.is_file()
    summary = result.summary()
    # dbt-duckdb reports no rows_affected (None); dbt-postgres does (test_dbt_postgres_parity)
    assert set(summary["models"]["sales_summary"]) == {"s", "rows_affected"}
    assert len(summary["slowest"]) == 5
    assert summary["failed_tests"] == {}
    text = caplog.text
    assert "dbt model sales_summary: success in" in text
    assert "dbt slowest 5 nodes:" in text


def test_unit_tests_run_by_default_and_not_in_the_nightly_build(
    new_york_build: tuple[Path, DbtResult], tmp_path: Path
) -> None:
    """A plain build (analytics engineers, make test) runs the unit tests; the nightly's
    call (unit_tests=False) leaves them out but still runs every model and data test."""
    built, plain = new_york_build
    plain_kinds = [n.resource_type for n in plain.nodes]
    assert {"unit_test", "test", "model", "snapshot"} <= set(plain_kinds)
    path = tmp_path / "nightly.duckdb"
    shutil.copy(built, path)
    result = dbt_build(path, BuildPlan("America/New_York", unit_tests=False))
    kinds = [n.resource_type for n in result.nodes]
    assert "unit_test" not in kinds
    assert sorted(kinds) == sorted(k for k in plain_kinds if k != "unit_test")
    assert not result.failed
    assert "--exclude-resource-type" in result.args
    assert _query(path, SUMMARY_SQL) == EXPECTED_NEW_YORK


def test_failed_tests_are_summarised_with_failure_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    path = tmp_path / "warehouse.duckdb"
    _make_raw(path, "INSERT INTO raw.orders SELECT * FROM raw.orders WHERE id IN (1, 2);")
    with caplog.at_level(logging.INFO, logger="warehouse.dbt_runner"):
        with pytest.raises(DbtError) as excinfo:
            dbt_build(path, BuildPlan("UTC"))
    failed = excinfo.value.result.summary()["failed_tests"]
    assert failed["unique_stg_orders_order_id"] == 2
    assert "dbt test unique_stg_orders_order_id: fail, 2 failing rows" in caplog.text


# --- incremental builds test the run's slice; per-run settings keep partial parsing ------


def test_incremental_build_tests_only_the_runs_rows(incremental_pair: tuple[Path, Path]) -> None:
    """A bad status in a row run r2 did not load passes r2's tests (it was tested when it
    was loaded) but fails a full build; the same bad value in a row r3 loads fails r3."""
    incremental, full = incremental_pair
    for path in (incremental, full):
        con = duckdb.connect(str(path))
        try:
            con.execute("UPDATE raw.payments SET status = 'lost' WHERE id = 'p1'")  # r1's row
        finally:
            con.close()
    result = dbt_build(incremental, BuildPlan("UTC", run_id="r2"))
    assert not result.failed
    assert result.run_results_path is not None
    compiled = {
        r["unique_id"].split(".")[2]: r["compiled_code"]
        for r in json.loads(result.run_results_path.read_text())["results"]
    }
    assert (
        "where run_id = 'r2'"
        in compiled["accepted_values_stg_payments_status__succeeded__failed__refunded"]
    )
    # fct_orders: the orders it re-inserted (r2's restated orders: none, this warehouse has
    # no ops.restated_orders; the days r2 recorded, rebuilt whole)
    assert "(order_id in (" in compiled["unique_fct_orders_order_id"]
    assert "restated_days" in compiled["unique_fct_orders_order_id"]
    assert "'r2'" in compiled["unique_fct_orders_order_id"]
    # int_orders_converted's rules are tested on the rows fct_orders re-inserts
    assert "where false" in compiled["unique_int_orders_converted_order_id"]
    assert "'r2'" in compiled["not_null_fct_orders_is_counted"]
    # fct_order_items / fct_payments: the keys r2 loaded
    assert "_run_id = 'r2'" in compiled["unique_fct_order_items_order_item_id"]
    assert "_run_id = 'r2'" in compiled["unique_fct_payments_payment_id"]
    with pytest.raises(DbtError, match="accepted_values_stg_payments_status"):
        dbt_build(full, BuildPlan("UTC"))

    con = duckdb.connect(str(incremental))
    try:
        con.execute(
            "INSERT INTO raw.payments VALUES ('p2', 5, 7.50, 'USD', 'lost', 'card', "
            "'2024-01-16 03:01:00+00', '2024-01-16 03:01:00+00', 'r3', now())"
        )
    finally:
        con.close()
    with pytest.raises(DbtError) as excinfo:
        dbt_build(incremental, BuildPlan("UTC", run_id="r3"))
    failed = excinfo.value.result.summary()["failed_tests"]
    assert failed == {"accepted_values_stg_payments_status__succeeded__failed__refunded": 1}


def test_a_new_run_id_keeps_partial_parsing(
    incremental_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """run_id and through_date reach dbt as env vars: a new night re-parses the few files
    that read them, not the whole project (a changed --vars would)."""
    incremental, _ = incremental_pair
    target_dir = tmp_path / "target"
    dbt_build(incremental, BuildPlan("UTC", "2024-01-16", run_id="r1", target_dir=target_dir))
    # the next night builds its own copy, named after its run id (warehouse/publish.py)
    night2 = build_path_for(incremental, "r2")
    shutil.copy(incremental, night2)
    result = dbt_build(night2, BuildPlan("UTC", "2024-01-17", run_id="r2", target_dir=target_dir))
    assert "Unable to do partial parsing" not in result.output
    assert "full parse" not in result.output.lower()
    assert (target_dir / "partial_parse.msgpack").is_file()
    # issue 16: and nothing is re-parsed: the per-night settings are read when dbt executes,
    # not while it parses (macros/run_setting.sql); dbt's debug log says what it re-parsed
    log = (target_dir / "logs" / "dbt.log").read_text()
    night2_log = log[log.rfind("Running with dbt=") :]
    said = [line for line in night2_log.splitlines() if "artial pars" in line]
    # (files added or deleted meanwhile, e.g. by someone editing the project, do not count)
    assert re.search(r"Partial parsing enabled: .* 0 files changed", night2_log), said
    assert "Partial parsing: updated file" not in night2_log, said
    days = _query(night2, "select max(date) from analytics.sales_summary")
    assert days == [(dt.date(2024, 1, 17),)]  # the new through_date was used
    days = _query(incremental, "select max(date) from analytics.sales_summary")
    assert days == [(dt.date(2024, 1, 16),)]  # the link pointed at night 2's file only


def _insert_leaving_wal(path: Path, value: int) -> None:
    """Insert a row and close without a checkpoint: the row is only in `<path>.wal`."""
    con = duckdb.connect(str(path))
    try:
        con.execute("pragma disable_checkpoint_on_shutdown")
        con.execute("create table if not exists t (v integer)")
        con.execute("insert into t values (?)", [value])
    finally:
        con.close()


def test_stable_path_keeps_the_wal_with_the_build(tmp_path: Path) -> None:
    """DuckDB resolves the link: a WAL next to the build (a killed writer's log that
    begin_build copied in) is replayed through the link, and what is written through the
    link, even by a killed process, is in the build file's own WAL."""
    build = tmp_path / "warehouse.duckdb.r1.build"
    wal = build.with_name(build.name + ".wal")
    _insert_leaving_wal(build, 1)
    assert wal.exists()
    target = tmp_path / "target"
    with stable_warehouse_path(build, target) as link:
        assert link.name == "warehouse.duckdb" and link.resolve() == build.resolve()
        assert _query(link, "select v from t") == [(1,)]
        _insert_leaving_wal(link, 2)
    assert not link.with_name(link.name + ".wal").exists() and wal.exists()
    assert _query(build, "select v from t order by v") == [(1,), (2,)]

    code = (  # killed inside the context: no cleanup runs
        "import os, sys, duckdb; from pathlib import Path; "
        "from warehouse.dbt_runner import stable_warehouse_path; "
        "link = stable_warehouse_path(Path(sys.argv[1]), Path(sys.argv[2])).__enter__(); "
        "con = duckdb.connect(str(link)); con.execute('pragma disable_checkpoint_on_shutdown'); "
        "con.execute('insert into t values (3)'); con.close(); os._exit(9)"
    )
    killed = subprocess.run(
        [sys.executable, "-c", code, str(build), str(target)], cwd=PROJECT_DIR.parent
    )
    assert killed.returncode == 9
    assert not (target / "duckdb" / "warehouse.duckdb.wal").exists()
    other = tmp_path / "warehouse.duckdb.r2.build"
    _insert_leaving_wal(other, 10)
    with stable_warehouse_path(other, target) as link:  # the lock died with the process
        assert _query(link, "select v from t") == [(10,)]
    assert _query(build, "select v from t order by v") == [(1,), (2,), (3,)]
