"""daily_sales from hand-made warehouse `raw` tables: the definitions of docs/contract.md, exact rows."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from transform import daily_sales
from transform.daily_sales import (
    MissingFxRateError,
    ReadChunks,
    compute_daily_sales,
    plan_daily_sales,
    publish_daily_sales,
)

TS = pa.timestamp("us", tz="UTC")
MONEY = pa.decimal128(12, 2)
RATE = pa.decimal128(38, 18)
UPDATED = datetime(2026, 3, 9, 6, 0, tzinfo=UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def write_raw(warehouse: Path, table: str, data: pa.Table) -> None:
    """Write `raw.<table>` the way the loader leaves it: source columns + load metadata."""
    warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(warehouse)) as con:
        con.execute("create schema if not exists raw")
        con.register("data_arrow", data)
        con.execute(
            f'create or replace table raw."{table}" as '
            "select *, 'run' as _run_id, now() as _loaded_at from data_arrow"
        )


USERS = pa.table(
    {
        "id": pa.array([1, 2, 3, 4], pa.int64()),
        "email": ["a@x", "b@x", "c@x", "d@x"],
        "region": pa.array(["EU", None, "   ", "US"], pa.string()),
        "favourite_colour": ["red", "green", "blue", "pink"],  # extra column
        "updated_at": pa.array([UPDATED] * 4, TS),
    }
)
PRODUCTS = pa.table(
    {
        "id": pa.array([10, 11, 12, 13, 14], pa.int64()),
        "sku": ["B", "G", "N", "S", "Z"],
        "category": pa.array(["books", "games", None, " \t", "Zebra"], pa.string()),
        "price": pa.array([Decimal("1.00")] * 5, MONEY),
        "updated_at": pa.array([UPDATED] * 5, TS),
    }
)
# (id, user_id, status, currency, total, created_at UTC)
ORDER_ROWS = [
    # 23:30 EST on 2026-03-07 in New York; tie books 3.00 vs games 3.00 -> books
    (1, 1, "paid", "EUR", "10.00", "2026-03-08T04:30:00"),
    # refunded counts; NULL region -> unknown; missing product -> uncategorized
    (2, 2, "refunded", "USD", "5.00", "2026-03-07T15:00:00"),
    # cancelled: not counted, and its currency needs no rate
    (3, 3, "cancelled", "CHF", "100.00", "2026-03-07T16:00:00"),
    # missing user -> unknown; no items -> uncategorized; JPY 1000 / 149.5 = 6.6889
    (4, 99, "delivered", "JPY", "1000.00", "2026-03-07T12:00:00"),
    # product with NULL category -> uncategorized
    (5, 4, "shipped", "USD", "20.00", "2026-03-07T20:00:00"),
    # tie uncategorized (blank category) 3*2.50 vs Zebra 1*7.50 -> "Zebra" (byte order)
    (6, 4, "paid", "USD", "7.50", "2026-03-07T21:00:00"),
    # 00:30 EDT on 2026-03-09 (after the DST switch: a fixed -05:00 would say 03-08)
    (7, 1, "pending", "EUR", "0.01", "2026-03-09T04:30:00"),
    # 01:00 EST on 2026-03-08 (before the switch at 07:00Z)
    (8, 1, "paid", "EUR", "50.00", "2026-03-08T06:00:00"),
    # GBP has no rate for 2026-03-10: only a problem when that day is in scope
    (9, 2, "paid", "GBP", "1.00", "2026-03-10T12:00:00"),
    # blank region -> unknown
    (10, 3, "paid", "USD", "3.33", "2026-03-06T12:00:00"),
]


def orders_table(rows: list[tuple]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int64()),
            "user_id": pa.array([r[1] for r in rows], pa.int64()),
            "status": [r[2] for r in rows],
            "currency": [r[3] for r in rows],
            "total": pa.array([Decimal(r[4]) for r in rows], MONEY),
            "created_at": pa.array([utc(r[5]) for r in rows], TS),
            "coupon_code": pa.array([None] * len(rows), pa.string()),  # extra column
            "updated_at": pa.array([UPDATED] * len(rows), TS),
        }
    )


# (id, order_id, product_id, quantity, unit_price)
ITEM_ROWS = [
    (100, 1, 10, 1, "3.00"),
    (101, 1, 11, 2, "1.50"),
    (102, 2, 999, 1, "9.99"),
    (103, 3, 10, 1, "100.00"),
    (104, 5, 12, 1, "20.00"),
    (105, 6, 13, 3, "2.50"),
    (106, 6, 14, 1, "7.50"),
    (107, 7, 11, 1, "0.01"),
    (108, 8, 10, 1, "50.00"),
    (109, 8, 11, 1, "49.99"),
    (110, 10, 10, 1, "3.33"),
]


def items_table(rows: list[tuple]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int64()),
            "order_id": pa.array([r[1] for r in rows], pa.int64()),
            "product_id": pa.array([r[2] for r in rows], pa.int64()),
            "quantity": pa.array([r[3] for r in rows], pa.int64()),
            "unit_price": pa.array([Decimal(r[4]) for r in rows], MONEY),
            "updated_at": pa.array([UPDATED] * len(rows), TS),
        }
    )


FX_ROWS = [
    (date(2026, 3, 6), "USD", "1"),
    (date(2026, 3, 7), "USD", "1"),
    (date(2026, 3, 7), "EUR", "0.9213"),
    (date(2026, 3, 7), "JPY", "149.5"),
    (date(2026, 3, 8), "USD", "1"),
    (date(2026, 3, 8), "EUR", "0.92"),
    (date(2026, 3, 9), "EUR", "0.92"),
    (date(2026, 3, 10), "USD", "1"),
]


def fx_table(rows: list[tuple]) -> pa.Table:
    return pa.table(
        {
            "rate_date": pa.array([r[0] for r in rows], pa.date32()),
            "base": ["USD"] * len(rows),
            "currency": [r[1] for r in rows],
            "rate": pa.array([Decimal(r[2]) for r in rows], RATE),
        }
    )


def write_all(warehouse: Path, orders: list[tuple], items: list[tuple], fx: list[tuple]) -> Path:
    write_raw(warehouse, "users", USERS)
    write_raw(warehouse, "products", PRODUCTS)
    write_raw(warehouse, "orders", orders_table(orders))
    write_raw(warehouse, "order_items", items_table(items))
    write_raw(warehouse, "fx_rates", fx_table(fx))
    return warehouse


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    """The warehouse file holding the raw tables (the name stays for the tests below)."""
    return write_all(tmp_path / "source" / "warehouse.duckdb", ORDER_ROWS, ITEM_ROWS, FX_ROWS)


def rows(df) -> list[tuple]:
    return [tuple(r) for r in df.itertuples(index=False)]


EXPECTED_THROUGH_0309 = [
    (date(2026, 3, 6), "unknown", "books", Decimal("3.33"), 1),
    (date(2026, 3, 7), "EU", "books", Decimal("10.85"), 1),
    (date(2026, 3, 7), "US", "Zebra", Decimal("7.50"), 1),
    (date(2026, 3, 7), "US", "uncategorized", Decimal("20.00"), 1),
    (date(2026, 3, 7), "unknown", "uncategorized", Decimal("11.69"), 2),  # 5.00 + 6.69
    (date(2026, 3, 8), "EU", "books", Decimal("54.35"), 1),  # 50 / 0.92 = 54.3478
    (date(2026, 3, 9), "EU", "games", Decimal("0.01"), 1),  # 0.01 / 0.92 = 0.0109
]


def test_exact_rows_in_new_york(landing: Path) -> None:
    df = compute_daily_sales(landing, "America/New_York", date(2026, 3, 9))
    assert list(df.columns) == ["date", "region", "category", "total_sales_usd", "order_count"]
    assert rows(df) == EXPECTED_THROUGH_0309
    for value in df["total_sales_usd"]:
        assert isinstance(value, Decimal) and value.as_tuple().exponent == -2
    assert all(type(d) is date for d in df["date"])
    assert all(type(n) is int for n in df["order_count"].tolist())


def test_through_date_filters_later_days(landing: Path) -> None:
    df = compute_daily_sales(landing, "America/New_York", date(2026, 3, 7))
    assert rows(df) == [r for r in EXPECTED_THROUGH_0309 if r[0] <= date(2026, 3, 7)]


def test_utc_business_day_differs(landing: Path) -> None:
    # In UTC order 1 (04:30Z on 03-08) belongs to 03-08, at the EUR rate of 03-08.
    df = compute_daily_sales(landing, "UTC", date(2026, 3, 8))
    got = {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows(df)}
    assert got[(date(2026, 3, 8), "EU", "books")] == (Decimal("65.22"), 2)  # 10.87 + 54.35
    assert (date(2026, 3, 7), "EU", "books") not in got


def test_missing_fx_rate_names_currency_and_day(landing: Path) -> None:
    # Without through_date, order 9 (GBP on 2026-03-10) is in scope and has no rate.
    with pytest.raises(MissingFxRateError, match=r"'GBP' on business day 2026-03-10") as err:
        compute_daily_sales(landing, "America/New_York", None)
    assert err.value.currency == "GBP"
    assert err.value.day == date(2026, 3, 10)


def test_missing_fx_rate_is_never_taken_from_another_day(tmp_path: Path, landing: Path) -> None:
    # EUR has rates on 03-08 and 03-09 but not on 03-07: order 1 must fail, not borrow.
    fx = [r for r in FX_ROWS if not (r[0] == date(2026, 3, 7) and r[1] == "EUR")]
    write_raw(landing, "fx_rates", fx_table(fx))
    with pytest.raises(MissingFxRateError, match=r"'EUR' on business day 2026-03-07"):
        compute_daily_sales(landing, "America/New_York", date(2026, 3, 9))


def test_a_key_held_twice_in_raw_is_an_error_naming_table_and_key(landing: Path) -> None:
    # raw holds one row per key (the loader merges by key, like dbt assumes): a second
    # version of user 1 would count its orders twice, so it stops the transform instead.
    users = pa.concat_tables(
        [
            USERS,
            pa.table(
                {
                    "id": pa.array([1], pa.int64()),
                    "email": ["a@x"],
                    "region": ["APAC"],
                    "favourite_colour": ["red"],
                    "updated_at": pa.array([utc("2026-03-09T07:00:00")], TS),
                }
            ),
        ]
    )
    write_raw(landing, "users", users)
    with pytest.raises(ValueError, match=r"raw\.users holds more than one row for id\(s\) \[1\]"):
        compute_daily_sales(landing, "America/New_York", date(2026, 3, 9))


def test_missing_column_is_reported(landing: Path) -> None:
    write_raw(landing, "products", PRODUCTS.drop_columns(["category"]))
    with pytest.raises(ValueError, match="missing column.*category"):
        compute_daily_sales(landing, "UTC", None)


def test_missing_raw_table_is_reported(landing: Path) -> None:
    with duckdb.connect(str(landing)) as con:
        con.execute("drop table raw.orders")
    with pytest.raises(LookupError, match=r"raw\.orders does not exist"):
        compute_daily_sales(landing, "UTC", date(2026, 3, 9))


def test_missing_warehouse_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.duckdb"):
        compute_daily_sales(tmp_path / "nowhere.duckdb", "UTC", None)


def test_reads_read_only_and_ignores_extra_columns(landing: Path) -> None:
    # another reader holding the file read-only does not block the transform
    with duckdb.connect(str(landing), read_only=True):
        df = compute_daily_sales(landing, "America/New_York", date(2026, 3, 9))
    assert rows(df) == EXPECTED_THROUGH_0309


def test_no_counted_orders_gives_empty_frame(tmp_path: Path) -> None:
    root = write_all(tmp_path / "wh.duckdb", [ORDER_ROWS[2]], [], [])  # cancelled only
    df = compute_daily_sales(root, "UTC", None)
    assert df.empty
    assert list(df.columns) == ["date", "region", "category", "total_sales_usd", "order_count"]


def describe(warehouse: Path) -> list[tuple[str, str]]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return [(r[0], r[1]) for r in con.execute("describe analytics.daily_sales").fetchall()]


def read_back(warehouse: Path) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(
            "select * from analytics.daily_sales order by date, region, category"
        ).fetchall()


EXPECTED_TYPES = [
    ("date", "DATE"),
    ("region", "VARCHAR"),
    ("category", "VARCHAR"),
    ("total_sales_usd", "DECIMAL(18,2)"),
    ("order_count", "BIGINT"),
]


def test_publish_exact_types_and_idempotent(landing: Path, tmp_path: Path) -> None:
    df = compute_daily_sales(landing, "America/New_York", date(2026, 3, 9))
    warehouse = tmp_path / "wh" / "warehouse.duckdb"
    assert publish_daily_sales(df, warehouse) == len(EXPECTED_THROUGH_0309)
    assert describe(warehouse) == EXPECTED_TYPES
    first = read_back(warehouse)
    assert first == EXPECTED_THROUGH_0309
    assert publish_daily_sales(df, warehouse) == len(EXPECTED_THROUGH_0309)
    assert read_back(warehouse) == first
    assert describe(warehouse) == EXPECTED_TYPES


def test_publish_replaces_and_handles_empty(landing: Path, tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    df = compute_daily_sales(landing, "America/New_York", date(2026, 3, 9))
    publish_daily_sales(df, warehouse)
    assert publish_daily_sales(df.iloc[0:0], warehouse) == 0
    assert read_back(warehouse) == []
    assert describe(warehouse) == EXPECTED_TYPES


# ----------------------------------------------------------------- incremental runs

NY = "America/New_York"


def restate(warehouse: Path, run_id: str, days: list[date]) -> None:
    """What warehouse/load.py records for a run: the business days its changes touch."""
    with duckdb.connect(str(warehouse)) as con:
        con.execute("create schema if not exists ops")
        con.execute(
            "create table if not exists ops.restated_days "
            "(run_id varchar not null, business_date date not null, reason varchar not null)"
        )
        for day in days:
            con.execute(
                "insert into ops.restated_days values (?, ?, 'order_changed')", [run_id, day]
            )


def refresh(warehouse: Path, through: date, run_id: str, *, full: bool = False, tz: str = NY):
    """One nightly transform step: plan, compute the planned days, publish them."""
    plan = plan_daily_sales(warehouse, tz, through, run_id, full=full)
    publish_daily_sales(compute_daily_sales(warehouse, tz, through, plan=plan), warehouse, plan)
    return plan


def by_day(warehouse: Path) -> dict[date, list[tuple]]:
    days: dict[date, list[tuple]] = {}
    for row in read_back(warehouse):
        days.setdefault(row[0], []).append(row)
    return days


def set_order_total(warehouse: Path, order_id: int, total: str) -> None:
    with duckdb.connect(str(warehouse)) as con:
        con.execute("update raw.orders set total = ? where id = ?", [Decimal(total), order_id])


def test_first_run_is_full_then_only_changed_days_are_replaced(landing: Path) -> None:
    first = refresh(landing, date(2026, 3, 9), "r1")
    assert first.full and first.days[0] == date(2026, 3, 6) and first.days[-1] == date(2026, 3, 9)
    before = by_day(landing)
    assert [r for rows in before.values() for r in rows] == EXPECTED_THROUGH_0309

    # Order 8 (2026-03-08) changes and its day is restated. Order 6 (2026-03-07) changes
    # too but no run recorded that day: an incremental run must not touch it.
    set_order_total(landing, 8, "60.00")
    set_order_total(landing, 6, "99.00")
    restate(landing, "r2", [date(2026, 3, 8)])
    plan = refresh(landing, date(2026, 3, 9), "r2")

    assert not plan.full and plan.days == [date(2026, 3, 8)]
    after = by_day(landing)
    assert after[date(2026, 3, 8)] == [(date(2026, 3, 8), "EU", "books", Decimal("65.22"), 1)]
    for day in (date(2026, 3, 6), date(2026, 3, 7), date(2026, 3, 9)):
        assert after[day] == before[day]  # untouched, although order 6 changed in raw


def test_incremental_equals_a_full_rebuild(landing: Path, tmp_path: Path) -> None:
    refresh(landing, date(2026, 3, 8), "r1")
    set_order_total(landing, 1, "20.00")  # 2026-03-07 (New York)
    with duckdb.connect(str(landing)) as con:  # order 2 is cancelled now: 03-07 loses a row
        con.execute("update raw.orders set status = 'cancelled' where id = 2")
    restate(landing, "r2", [date(2026, 3, 7)])
    plan = refresh(landing, date(2026, 3, 9), "r2")
    assert plan.days == [date(2026, 3, 7), date(2026, 3, 9)]  # restated + the new day

    copy = tmp_path / "full.duckdb"
    copy.write_bytes(landing.read_bytes())
    assert refresh(copy, date(2026, 3, 9), "r2", full=True).full
    assert read_back(landing) == read_back(copy)
    assert (date(2026, 3, 7), "unknown", "uncategorized", Decimal("6.69"), 1) in read_back(copy)


def test_plan_covers_new_days_fx_changes_and_a_new_time_zone(landing: Path) -> None:
    refresh(landing, date(2026, 3, 7), "r1")
    # the next run covers every day after the last computed one, up to its own day
    assert plan_daily_sales(landing, NY, date(2026, 3, 9), "r2").days == [
        date(2026, 3, 8),
        date(2026, 3, 9),
    ]
    # an FX rate that changed after its day was computed restates that day
    with duckdb.connect(str(landing)) as con:
        con.execute(
            "update raw.fx_rates set rate = 0.9 where rate_date = '2026-03-07' and currency = 'EUR'"
        )
    assert plan_daily_sales(landing, NY, date(2026, 3, 7), "r2").days == [date(2026, 3, 7)]
    # restated days after the run's day wait for the run that covers them
    restate(landing, "r3", [date(2026, 3, 6), date(2026, 3, 10)])
    assert date(2026, 3, 10) not in plan_daily_sales(landing, NY, date(2026, 3, 7), "r3").days
    # business days move with REPORT_TZ: everything is rebuilt
    plan = plan_daily_sales(landing, "UTC", date(2026, 3, 7), "r3")
    assert plan.full and "REPORT_TZ changed" in plan.reason


def test_chunks_of_days_give_the_same_rows(landing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []  # business days of each read
    real = daily_sales._read_chunk

    def counted(reader, chunk, report_tz):
        reads.append(len(chunk))
        return real(reader, chunk, report_tz)

    monkeypatch.setattr(daily_sales, "_read_chunk", counted)
    assert ReadChunks() == ReadChunks(daily_sales.CHUNK_DAYS, daily_sales.CHUNK_ORDERS)
    whole = compute_daily_sales(landing, NY, date(2026, 3, 9), chunks=ReadChunks(days=31))
    days = sum(reads)
    assert reads == [days] and days > 3
    for size in (1, 2, 3):
        reads.clear()
        chunked = compute_daily_sales(landing, NY, date(2026, 3, 9), chunks=ReadChunks(days=size))
        assert rows(chunked) == rows(whole)
        assert sum(reads) == days and max(reads) == size


def test_incremental_publish_rejects_rows_of_other_days(landing: Path) -> None:
    refresh(landing, date(2026, 3, 9), "r1")
    plan = plan_daily_sales(landing, NY, date(2026, 3, 9), "r1")
    full = compute_daily_sales(landing, NY, date(2026, 3, 9))
    before = read_back(landing)
    with pytest.raises(ValueError, match="outside the plan"):
        publish_daily_sales(full, landing, plan)
    assert read_back(landing) == before
