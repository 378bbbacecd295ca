"""Incremental daily_sales in a run's build: days the night's orders explain are the
published rows adjusted by those orders (old contribution out, new one in), and the
result must equal a full recomputation on the same `raw`, row for row and to the cent.

Real DuckDB files and builds (warehouse/backends/duckdb.py); the night's changes are
written into the build's `raw` with the `ops` records the loader keeps (old and new
business day of every changed order), covering late orders, deleted orders and items,
status changes, day moves, region and category moves, new totals and FX revisions.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from transform.daily_sales import (
    compute_daily_sales,
    plan_daily_sales,
    publish_daily_sales,
)
from warehouse.backends.duckdb import DuckDBWarehouse

TZ = "America/New_York"
FIRST = date(2026, 3, 1)
DAYS = 12
THROUGH = FIRST + timedelta(days=DAYS - 1)
REGIONS = ["EU", "US", "APAC", None, "  "]
CATEGORIES = ["books", "games", "toys", None]
CURRENCIES = ["USD", "EUR", "JPY"]
STATUSES = ["paid", "shipped", "refunded", "cancelled"]
OPS_DDL = """
create schema if not exists ops;
create table if not exists ops.restated_days (run_id varchar, business_date date, reason varchar);
create table if not exists ops.restated_orders (run_id varchar, order_id bigint, business_date date);
create table if not exists ops.deleted_rows (
    run_id varchar, table_name varchar, key varchar, deleted_at timestamptz);
"""


def _ts(rng: random.Random, first: date = FIRST, days: int = DAYS) -> datetime:
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    return start + timedelta(seconds=rng.randrange(days * 86400))


def history(path: Path, seed: int, orders: int = 400) -> None:
    """A published warehouse: raw tables as the loader leaves them."""
    rng = random.Random(seed)
    users = [(i, rng.choice(REGIONS)) for i in range(1, 31)]
    products = [(i, rng.choice(CATEGORIES)) for i in range(1, 13)]
    order_rows, item_rows = [], []
    for oid in range(1, orders + 1):
        order_rows.append(
            (
                oid,
                rng.randrange(1, 33),  # 31, 32: no such user
                rng.choice(STATUSES),
                rng.choice(CURRENCIES),
                Decimal(rng.randrange(1, 100_000)) / 100,
                _ts(rng),
            )
        )
        for _ in range(rng.randrange(0, 4)):
            item_rows.append(
                (
                    len(item_rows) + 1,
                    oid,
                    rng.randrange(1, 14),  # 13: no such product
                    rng.randrange(1, 4),
                    Decimal(rng.randrange(1, 5000)) / 100,
                )
            )
    fx = []
    for k in range(-1, DAYS + 3):
        day = FIRST + timedelta(days=k)
        fx += [(day, "USD", Decimal("1"), "USD"), (day, "EUR", Decimal("0.9213"), "USD")]
        fx.append((day, "JPY", Decimal("149.5") + k, "USD"))
    with duckdb.connect(str(path)) as con:
        con.execute("create schema raw")
        con.execute("create table raw.users (id bigint, region varchar)")
        _insert(con, "insert into raw.users values (?, ?)", users)
        con.execute("create table raw.products (id bigint, category varchar)")
        _insert(con, "insert into raw.products values (?, ?)", products)
        con.execute(
            "create table raw.orders (id bigint, user_id bigint, status varchar, "
            "currency varchar, total decimal(12, 2), created_at timestamptz)"
        )
        _insert(con, "insert into raw.orders values (?, ?, ?, ?, ?, ?)", order_rows)
        con.execute(
            "create table raw.order_items (id bigint, order_id bigint, product_id bigint, "
            "quantity bigint, unit_price decimal(12, 2))"
        )
        _insert(con, "insert into raw.order_items values (?, ?, ?, ?, ?)", item_rows)
        con.execute(
            "create table raw.fx_rates (rate_date date, currency varchar, "
            "rate decimal(38, 18), base varchar)"
        )
        _insert(con, "insert into raw.fx_rates values (?, ?, ?, ?)", fx)
        con.execute(OPS_DDL)


def _insert(con: duckdb.DuckDBPyConnection, sql: str, rows: list[tuple]) -> None:
    """`insert into t values (?, ...)` of many rows at once, through Arrow."""
    table = sql.split()[2]
    columns = [r[0] for r in con.execute(f"describe {table}").fetchall()]
    data = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns[: len(rows[0])])})
    con.register("rows_arrow", data)
    con.execute(f"insert into {table} ({', '.join(data.column_names)}) select * from rows_arrow")
    con.unregister("rows_arrow")


def first_night(path: Path) -> None:
    plan = plan_daily_sales(path, TZ, THROUGH, "n1")
    assert plan.full
    publish_daily_sales(compute_daily_sales(path, TZ, THROUGH, plan=plan), path, plan)


def _record(s, run_id: str, ids: list[int], reason: str) -> None:
    """The loader's record of changed orders: their business day in the current state."""
    if not ids:
        return
    marks = ", ".join("?" for _ in ids)
    pairs = (
        "select id, cast(timezone(cast(? as varchar), created_at) as date) as d "
        f"from raw.orders where id in ({marks})"
    )
    s.execute(f"insert into ops.restated_orders select ?, id, d from ({pairs})", [run_id, TZ, *ids])
    s.execute(
        f"insert into ops.restated_days select distinct ?, d, ? from ({pairs})",
        [run_id, reason, TZ, *ids],
    )


def _orders_of(s, column: str, table: str, ids: list[int]) -> list[int]:
    marks = ", ".join("?" for _ in ids)
    if table == "users":
        sql = f"select id from raw.orders where user_id in ({marks})"
    else:
        sql = f"select distinct order_id from raw.order_items where product_id in ({marks})"
    return [r[0] for r in s.fetchall(sql, ids)] if ids else []


def night(wh: DuckDBWarehouse, run_id: str, seed: int, *, fx_revision: bool = False) -> None:
    """One night's changes in the run's build, recorded as the loader records them."""
    rng = random.Random(seed)
    build = wh.begin_build(run_id)
    with wh.transaction(build) as s:
        top = s.fetchone("select max(id) from raw.orders")[0]
        changed = rng.sample(range(1, top + 1), 25)
        status, totals, moves, currency, deleted = (changed[i::5] for i in range(5))
        users = rng.sample(range(1, 31), 2)
        products = rng.sample(range(1, 13), 2)
        items = [r[0] for r in s.fetchall("select id from raw.order_items order by id")]
        gone_items = rng.sample(items, 4)
        item_orders = [
            r[0]
            for r in s.fetchall(
                "select distinct order_id from raw.order_items where id in (?, ?, ?, ?)",
                gone_items,
            )
        ]
        # the old day of every order the night changes
        _record(s, run_id, status + totals + moves + currency + deleted, "order_changed")
        _record(s, run_id, _orders_of(s, "region", "users", users), "user_region")
        _record(s, run_id, _orders_of(s, "category", "products", products), "product_category")
        _record(s, run_id, item_orders, "item_deleted")
        for oid in status:
            s.execute("update raw.orders set status = ? where id = ?", [rng.choice(STATUSES), oid])
        for oid in totals:
            s.execute(
                "update raw.orders set total = ? where id = ?",
                [Decimal(rng.randrange(1, 100_000)) / 100, oid],
            )
        for oid in moves:  # to another business day, or an hour across midnight
            s.execute("update raw.orders set created_at = ? where id = ?", [_ts(rng), oid])
        for oid in currency:
            s.execute(
                "update raw.orders set currency = ? where id = ?", [rng.choice(CURRENCIES), oid]
            )
        for uid in users:
            s.execute(
                "update raw.users set region = ? where id = ?",
                [rng.choice(REGIONS + ["LATAM"]), uid],
            )
        for pid in products:
            s.execute(
                "update raw.products set category = ? where id = ?",
                [rng.choice(CATEGORIES + ["garden"]), pid],
            )
        marks = ", ".join("?" for _ in gone_items)
        s.execute(f"delete from raw.order_items where id in ({marks})", gone_items)
        s.execute(
            "insert into ops.deleted_rows select ?, 'order_items', cast(id as varchar), now() "
            f"from (select unnest([{marks}]) as id)",
            [run_id, *gone_items],
        )
        for oid in deleted:
            s.execute("delete from raw.orders where id = ?", [oid])
            s.execute(
                "insert into ops.deleted_rows values (?, 'orders', ?, now())", [run_id, str(oid)]
            )
        new = []
        for k in range(1, 16):  # new orders: today's, and late ones for earlier days
            oid = top + k
            day = THROUGH if k % 3 else FIRST + timedelta(days=rng.randrange(DAYS))
            s.execute(
                "insert into raw.orders values (?, ?, ?, ?, ?, ?)",
                [
                    oid,
                    rng.randrange(1, 33),
                    rng.choice(STATUSES),
                    rng.choice(CURRENCIES),
                    Decimal(rng.randrange(1, 100_000)) / 100,
                    _ts(rng, day, 1),
                ],
            )
            s.execute(
                "insert into raw.order_items values (?, ?, ?, 1, ?)",
                [10_000 * int(run_id[1:]) + k, oid, rng.randrange(1, 13), Decimal("12.34")],
            )
            new.append(oid)
        # the new day of every changed order (deleted ones have none)
        _record(s, run_id, status + totals + moves + currency, "order_changed")
        _record(s, run_id, _orders_of(s, "region", "users", users), "user_region")
        _record(s, run_id, _orders_of(s, "category", "products", products), "product_category")
        _record(s, run_id, item_orders, "item_deleted")
        _record(s, run_id, new, "order_new")
        if fx_revision:
            revised = FIRST + timedelta(days=3)
            s.execute(
                "update raw.fx_rates set rate = rate + 0.01 where rate_date = ? and currency = 'EUR'",
                [revised],
            )
            s.execute(
                "insert into ops.restated_days values (?, ?, 'fx rate revised')", [run_id, revised]
            )


def rows(frame) -> list[tuple]:
    return [tuple(r) for r in frame.itertuples(index=False)]


def table_rows(wh: DuckDBWarehouse, build=None) -> list[tuple]:
    return _rows(
        wh.read_arrow(
            "select * from {analytics}.daily_sales order by date, region, category", build=build
        )
    )


def _rows(table: pa.Table) -> list[tuple]:
    return list(zip(*(c.to_pylist() for c in table.columns), strict=True))


def run_night(wh: DuckDBWarehouse, run_id: str):
    build = wh.open_build(run_id)
    plan = plan_daily_sales(wh, TZ, THROUGH, run_id, build=build)
    frame = compute_daily_sales(wh, TZ, THROUGH, build=build, plan=plan)
    publish_daily_sales(frame, wh, plan, build=build)
    return build, plan, frame


@pytest.fixture
def warehouse(tmp_path: Path) -> DuckDBWarehouse:
    path = tmp_path / "warehouse.duckdb"
    history(path, seed=1)
    first_night(path)
    return DuckDBWarehouse(path)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_delta_night_equals_a_full_rebuild(warehouse: DuckDBWarehouse, seed: int) -> None:
    published_before = table_rows(warehouse)
    night(warehouse, "r2", seed)
    build, plan, frame = run_night(warehouse, "r2")
    assert not plan.full and plan.delta_days, plan.summary()
    assert set(plan.delta_days) == set(plan.days) - {THROUGH} or THROUGH in plan.delta_days
    full = compute_daily_sales(warehouse, TZ, THROUGH, build=build)
    assert table_rows(warehouse, build) == rows(full)
    assert table_rows(warehouse) == published_before  # nothing published yet
    # the adjusted days are exactly the recomputed ones
    recomputed = compute_daily_sales(warehouse, TZ, THROUGH, plan.delta_days, build=build)
    assert rows(frame[frame["date"].isin(plan.delta_days)]) == rows(recomputed)


def test_a_rerun_of_the_step_gives_the_same_table(warehouse: DuckDBWarehouse) -> None:
    """The baseline is the published table, so a retried step never applies a night twice."""
    night(warehouse, "r2", 5)
    build, _, first = run_night(warehouse, "r2")
    after_first = table_rows(warehouse, build)
    _, _, second = run_night(warehouse, "r2")
    assert rows(second) == rows(first)
    assert table_rows(warehouse, build) == after_first


def test_nights_in_a_row_stay_equal_to_a_full_rebuild(warehouse: DuckDBWarehouse) -> None:
    for k, seed in enumerate([6, 7, 8], start=2):
        run_id = f"r{k}"
        night(warehouse, run_id, seed, fx_revision=(k == 3))
        build, plan, _ = run_night(warehouse, run_id)
        revised = FIRST + timedelta(days=3)
        if k == 3:  # an FX revision changes orders nobody recorded: that day is recomputed
            assert revised in plan.days and revised not in plan.delta_days
        assert table_rows(warehouse, build) == rows(
            compute_daily_sales(warehouse, TZ, THROUGH, build=build)
        )
        warehouse.publish(build)
    assert table_rows(warehouse) == rows(compute_daily_sales(warehouse, TZ, THROUGH))


def test_deleted_users_fall_back_to_recomputing_days(warehouse: DuckDBWarehouse) -> None:
    night(warehouse, "r2", 9)
    build = warehouse.open_build("r2")
    with warehouse.transaction(build) as s:
        ids = [r[0] for r in s.fetchall("select id from raw.orders where user_id = 7")]
        _record(s, "r2", ids, "order_changed")  # not what the loader records for a user delete
        s.execute("delete from raw.users where id = 7")
        s.execute("insert into ops.deleted_rows values ('r2', 'users', '7', now())")
    _, plan, _ = run_night(warehouse, "r2")
    assert plan.delta_days == [] and not plan.full
    assert table_rows(warehouse, build) == rows(
        compute_daily_sales(warehouse, TZ, THROUGH, build=build)
    )


def test_a_published_table_that_disagrees_with_raw_is_an_error(
    warehouse: DuckDBWarehouse,
) -> None:
    night(warehouse, "r2", 10)
    build = warehouse.open_build("r2")
    plan = plan_daily_sales(warehouse, TZ, THROUGH, "r2", build=build)
    with duckdb.connect(str(warehouse.path)) as con:  # a row of a delta day lost its orders
        con.execute("delete from analytics.daily_sales where date < ?", [THROUGH])
    with pytest.raises(RuntimeError, match=r"daily_sales \d{4}-\d\d-\d\d / .* run a full rebuild"):
        compute_daily_sales(warehouse, TZ, THROUGH, build=build, plan=plan)


def test_chunks_by_order_count_give_the_same_rows(warehouse: DuckDBWarehouse) -> None:
    whole = compute_daily_sales(warehouse, TZ, THROUGH)
    assert rows(compute_daily_sales(warehouse, TZ, THROUGH, chunk_orders=1)) == rows(whole)
