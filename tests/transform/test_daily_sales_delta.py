"""Incremental daily_sales in a run's build: days the night's orders explain are the
published rows adjusted by those orders (old contribution out, new one in), and the
result must equal a full recomputation on the same `raw`, row for row and to the cent.

Real builds on DuckDB files and on PostgreSQL (warehouse/backends/); the night's changes are
written into the build's `raw` with the `ops` records the loader keeps (old and new
business day of every changed order), covering late orders, deleted orders and items,
status changes, day moves, region and category moves, new totals and FX revisions.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from transform import daily_sales
from transform.daily_sales import (
    DaysPlan,
    ReadChunks,
    compute_daily_sales,
    plan_daily_sales,
    publish_daily_sales,
)
from warehouse.backends.duckdb import DuckDBWarehouse
from warehouse.backends.postgres import PostgresWarehouse

TZ = "America/New_York"
FIRST = date(2026, 3, 1)
DAYS = 12
THROUGH = FIRST + timedelta(days=DAYS - 1)
REGIONS = ["EU", "US", "APAC", None, "  "]
CATEGORIES = ["books", "games", "toys", None]
CURRENCIES = ["USD", "EUR", "JPY"]
STATUSES = ["paid", "shipped", "refunded", "cancelled"]
MONEY = pa.decimal128(12, 2)
RATE = pa.decimal128(38, 18)
TS = pa.timestamp("us", tz="UTC")
# as warehouse/load.py creates them
OPS_DDL = """
create schema if not exists {ops};
create table if not exists {ops}.restated_days (
    run_id varchar(64) not null, business_date date not null, reason varchar(64) not null);
create table if not exists {ops}.restated_orders (
    run_id varchar(64) not null, order_id bigint not null, business_date date not null);
create table if not exists {ops}.deleted_rows (
    run_id varchar(64) not null, table_name varchar(64) not null, key varchar(64) not null,
    deleted_at timestamp with time zone not null);
"""


def _ts(rng: random.Random, first: date = FIRST, days: int = DAYS) -> datetime:
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    return start + timedelta(seconds=rng.randrange(days * 86400))


def history(wh: Any, seed: int, orders: int = 400) -> None:
    """Night 1, published: raw tables as the loader leaves them, daily_sales in full."""
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
    tables = {
        "users": (users, [("id", pa.int64()), ("region", pa.string())]),
        "products": (products, [("id", pa.int64()), ("category", pa.string())]),
        "orders": (
            order_rows,
            [("id", pa.int64()), ("user_id", pa.int64()), ("status", pa.string()),
             ("currency", pa.string()), ("total", MONEY), ("created_at", TS)],
        ),
        "order_items": (
            item_rows,
            [("id", pa.int64()), ("order_id", pa.int64()), ("product_id", pa.int64()),
             ("quantity", pa.int64()), ("unit_price", MONEY)],
        ),
        "fx_rates": (
            fx,
            [("rate_date", pa.date32()), ("currency", pa.string()), ("rate", RATE),
             ("base", pa.string())],
        ),
    }  # fmt: skip
    build = wh.begin_build("n1")
    with wh.transaction(build) as s:
        s.execute("create schema if not exists {raw}")
        for name, (data, fields) in tables.items():
            schema = pa.schema(fields)
            relation = s.table("raw", name)
            columns = ", ".join(f"{f.name} {s.column_type(f.type)}" for f in schema)
            s.execute(f"create table {relation} ({columns})")
            arrays = [pa.array([r[i] for r in data], f.type) for i, f in enumerate(schema)]
            s.insert_arrow(relation, pa.Table.from_arrays(arrays, schema=schema))
        s.execute(OPS_DDL)
    plan = plan_daily_sales(wh, TZ, THROUGH, "n1", build=build)
    assert plan.full
    frame = compute_daily_sales(wh, TZ, THROUGH, build=build, plan=plan)
    publish_daily_sales(frame, wh, plan, build=build)
    wh.publish(build)


def _record(s, run_id: str, ids: list[int], reason: str) -> None:
    """The loader's record of changed orders: their business day in the current state."""
    if not ids:
        return
    marks = ", ".join("?" for _ in ids)
    pairs = (
        "select id, cast(timezone(cast(? as varchar), created_at) as date) as d "
        f"from {{raw}}.orders where id in ({marks})"
    )
    s.execute(
        f"insert into {{ops}}.restated_orders select cast(? as varchar), id, d from ({pairs}) p",
        [run_id, TZ, *ids],
    )
    s.execute(
        f"insert into {{ops}}.restated_days select distinct cast(? as varchar), d, cast(? as varchar) from ({pairs}) p",
        [run_id, reason, TZ, *ids],
    )


def _orders_of(s, column: str, table: str, ids: list[int]) -> list[int]:
    marks = ", ".join("?" for _ in ids)
    if table == "users":
        sql = f"select id from {{raw}}.orders where user_id in ({marks})"
    else:
        sql = f"select distinct order_id from {{raw}}.order_items where product_id in ({marks})"
    return [r[0] for r in s.fetchall(sql, ids)] if ids else []


def night(wh: Any, run_id: str, seed: int, *, fx_revision: str = "") -> None:
    """One night's changes in the run's build, recorded as the loader records them.
    `fx_revision`: "recorded" (as the loader does) or "unrecorded" (only the rates differ)."""
    rng = random.Random(seed)
    build = wh.begin_build(run_id)
    with wh.transaction(build) as s:
        top = s.fetchone("select max(id) from {raw}.orders")[0]
        changed = rng.sample(range(1, top + 1), 25)
        status, totals, moves, currency, deleted = (changed[i::5] for i in range(5))
        users = rng.sample(range(1, 31), 2)
        products = rng.sample(range(1, 13), 2)
        items = [r[0] for r in s.fetchall("select id from {raw}.order_items order by id")]
        gone_items = rng.sample(items, 4)
        item_orders = [
            r[0]
            for r in s.fetchall(
                "select distinct order_id from {raw}.order_items where id in (?, ?, ?, ?)",
                gone_items,
            )
        ]
        # the old day of every order the night changes
        # (a deleted order is not recorded: the loader records deletes in ops.deleted_rows)
        _record(s, run_id, status + totals + moves + currency, "order_changed")
        _record(s, run_id, _orders_of(s, "region", "users", users), "user_region")
        _record(s, run_id, _orders_of(s, "category", "products", products), "product_category")
        _record(s, run_id, item_orders, "item_deleted")
        for oid in status:
            s.execute(
                "update {raw}.orders set status = ? where id = ?", [rng.choice(STATUSES), oid]
            )
        for oid in totals:
            s.execute(
                "update {raw}.orders set total = ? where id = ?",
                [Decimal(rng.randrange(1, 100_000)) / 100, oid],
            )
        for oid in moves:  # to another business day, or an hour across midnight
            s.execute("update {raw}.orders set created_at = ? where id = ?", [_ts(rng), oid])
        for oid in currency:
            s.execute(
                "update {raw}.orders set currency = ? where id = ?", [rng.choice(CURRENCIES), oid]
            )
        for uid in users:
            s.execute(
                "update {raw}.users set region = ? where id = ?",
                [rng.choice(REGIONS + ["LATAM"]), uid],
            )
        for pid in products:
            s.execute(
                "update {raw}.products set category = ? where id = ?",
                [rng.choice(CATEGORIES + ["garden"]), pid],
            )
        marks = ", ".join("?" for _ in gone_items)
        s.execute(
            "insert into {ops}.deleted_rows select cast(? as varchar), 'order_items', "
            "cast(id as varchar), now() "
            f"from {{raw}}.order_items where id in ({marks})",
            [run_id, *gone_items],
        )
        s.execute(f"delete from {{raw}}.order_items where id in ({marks})", gone_items)
        for oid in deleted:
            s.execute("delete from {raw}.orders where id = ?", [oid])
            s.execute(
                "insert into {ops}.deleted_rows values (?, 'orders', ?, now())", [run_id, str(oid)]
            )
        new = []
        for k in range(1, 16):  # new orders: today's, and late ones for earlier days
            oid = top + k
            day = THROUGH if k % 3 else FIRST + timedelta(days=rng.randrange(DAYS))
            s.execute(
                "insert into {raw}.orders values (?, ?, ?, ?, ?, ?)",
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
                "insert into {raw}.order_items values (?, ?, ?, 1, ?)",
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
            revised = FIRST + timedelta(days=3 if fx_revision == "recorded" else 5)
            s.execute(
                "update {raw}.fx_rates set rate = rate + 0.01 where rate_date = ? and currency = 'EUR'",
                [revised],
            )
        if fx_revision == "recorded":
            s.execute(
                "insert into {ops}.restated_days values (?, ?, 'fx rate revised')",
                [run_id, revised],
            )


def rows(frame) -> list[tuple]:
    return [tuple(r) for r in frame.itertuples(index=False)]


def table_rows(wh: Any, build=None) -> list[tuple]:
    return _rows(
        wh.read_arrow(
            "select * from {analytics}.daily_sales order by date, region, category", build=build
        )
    )


def _rows(table: pa.Table) -> list[tuple]:
    return list(zip(*(c.to_pylist() for c in table.columns), strict=True))


def run_night(wh: Any, run_id: str):
    build = wh.open_build(run_id)
    plan = plan_daily_sales(wh, TZ, THROUGH, run_id, build=build)
    frame = compute_daily_sales(wh, TZ, THROUGH, build=build, plan=plan)
    publish_daily_sales(frame, wh, plan, build=build)
    return build, plan, frame


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "postgres":
        wh: Any = PostgresWarehouse(request.getfixturevalue("pg_database"))
    else:
        wh = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    history(wh, seed=1)
    return wh


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_delta_night_equals_a_full_rebuild(warehouse: Any, seed: int) -> None:
    published_before = table_rows(warehouse)
    night(warehouse, "r2", seed)
    build, plan, frame = run_night(warehouse, "r2")
    assert not plan.full and plan.delta_days, plan.summary()
    assert set(plan.delta_days) == set(plan.days) - {THROUGH} or THROUGH in plan.delta_days
    full = compute_daily_sales(warehouse, TZ, THROUGH, build=build)
    assert table_rows(warehouse, build) == rows(full)
    assert table_rows(warehouse) == published_before  # nothing published yet
    # the adjusted days are exactly the recomputed ones
    recomputed = compute_daily_sales(
        warehouse, TZ, THROUGH, build=build, plan=DaysPlan.recompute(plan.delta_days, TZ)
    )
    assert rows(frame[frame["date"].isin(plan.delta_days)]) == rows(recomputed)


def test_a_rerun_of_the_step_gives_the_same_table(warehouse: Any) -> None:
    """The baseline is the published table, so a retried step never applies a night twice."""
    night(warehouse, "r2", 5)
    build, _, first = run_night(warehouse, "r2")
    after_first = table_rows(warehouse, build)
    _, _, second = run_night(warehouse, "r2")
    assert rows(second) == rows(first)
    assert table_rows(warehouse, build) == after_first


def test_nights_in_a_row_stay_equal_to_a_full_rebuild(warehouse: Any) -> None:
    revisions = {3: "recorded", 4: "unrecorded"}
    for k, seed in enumerate([6, 7, 8], start=2):
        run_id = f"r{k}"
        night(warehouse, run_id, seed, fx_revision=revisions.get(k, ""))
        build, plan, _ = run_night(warehouse, run_id)
        if k in revisions:  # new rates change orders nobody recorded: the day is recomputed
            revised = FIRST + timedelta(days=3 if k == 3 else 5)
            assert revised in plan.days and revised not in plan.delta_days
        assert table_rows(warehouse, build) == rows(
            compute_daily_sales(warehouse, TZ, THROUGH, build=build)
        )
        warehouse.publish(build)
    assert table_rows(warehouse) == rows(compute_daily_sales(warehouse, TZ, THROUGH))


def test_deleted_users_fall_back_to_recomputing_days(warehouse: Any) -> None:
    night(warehouse, "r2", 9)
    build = warehouse.open_build("r2")
    with warehouse.transaction(build) as s:
        ids = [r[0] for r in s.fetchall("select id from {raw}.orders where user_id = 7")]
        _record(s, "r2", ids, "order_changed")  # not what the loader records for a user delete
        s.execute("delete from {raw}.users where id = 7")
        s.execute("insert into {ops}.deleted_rows values ('r2', 'users', '7', now())")
    _, plan, _ = run_night(warehouse, "r2")
    assert plan.delta_days == [] and not plan.full
    assert table_rows(warehouse, build) == rows(
        compute_daily_sales(warehouse, TZ, THROUGH, build=build)
    )


def test_a_published_table_that_disagrees_with_raw_is_an_error(
    warehouse: Any,
) -> None:
    night(warehouse, "r2", 10)
    build = warehouse.open_build("r2")
    plan = plan_daily_sales(warehouse, TZ, THROUGH, "r2", build=build)
    # published rows that lost orders the published raw still holds
    warehouse.execute("delete from {analytics}.daily_sales where date < ?", [THROUGH])
    with pytest.raises(RuntimeError, match=r"daily_sales \d{4}-\d\d-\d\d / .* run a full rebuild"):
        compute_daily_sales(warehouse, TZ, THROUGH, build=build, plan=plan)


def test_chunks_by_order_count_give_the_same_rows(warehouse: Any) -> None:
    whole = compute_daily_sales(warehouse, TZ, THROUGH)
    one_order = ReadChunks(orders=1)
    assert rows(compute_daily_sales(warehouse, TZ, THROUGH, chunks=one_order)) == rows(whole)


def test_a_night_past_the_order_limit_recomputes_its_days(
    warehouse: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    night(warehouse, "r2", 11)
    monkeypatch.setattr(daily_sales, "DELTA_MAX_ORDERS", 10)
    build, plan, _ = run_night(warehouse, "r2")
    assert plan.delta_days == [] and plan.orders == () and not plan.full
    assert table_rows(warehouse, build) == rows(
        compute_daily_sales(warehouse, TZ, THROUGH, build=build)
    )
