"""Benchmark the dbt project on DuckDB: full build, dbt overhead, incremental share, publish.

Usage: python bench/bench_dbt.py [--orders 1000000] [--days 365] [--changed 0.01]

Raw tables (the schemas warehouse/load.py produces) are generated in a temp DuckDB file
with DuckDB SQL only (`range()` and `hash()`), then:
  (a) full_s: `dbt build` (models, snapshot, data and unit tests) through warehouse.dbt_runner;
  (b) raw_sql_s: the same final SQL (the compiled staging -> intermediate -> fct_orders ->
      sales_summary chain) run directly in DuckDB on a copy of the raw file;
  (c) incr_share: `dbt build` with var run_id after changing `--changed` of the orders (the
      most recent ones: nightly changes are late rows and status updates of recent orders)
      and writing their business days to ops.restated_days, divided by full_s;
  (d) publish_s: warehouse/publish.py's atomic swap (publish_build), with copy_s the
      begin_build copy; a reader connected before the swap keeps querying during both and
      its slowest query is reader_max_ms (readers must never wait on the writer).
Ends with: BENCH dbt full_s=<a> raw_sql_s=<b> incr_share=<c> publish_s=<d>
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from warehouse.dbt_runner import DEFAULT_PROJECT_DIR, dbt_build, run_dbt  # noqa: E402
from warehouse.publish import begin_build, publish_build  # noqa: E402

CHAIN = (
    "stg_users",
    "stg_products",
    "stg_orders",
    "stg_order_items",
    "stg_fx_rates",
    "int_orders_converted",
    "int_orders_categorized",
    "fct_orders",
    "sales_summary",
)


def make_raw(path: Path, orders: int, days: int) -> None:
    """users (orders/10), products (1000), orders, ~2 items per order, payments, fx_rates."""
    users = max(orders // 10, 1)
    con = duckdb.connect(str(path))
    try:
        con.execute(f"""
            set TimeZone = 'UTC';
            create schema raw; create schema ops;
            create table ops.restated_days (
                run_id varchar not null, business_date date not null, reason varchar not null);
            create table raw.users as
            select i::bigint as id, 'u' || i || '@example.com' as email, 'User ' || i as full_name,
                   case hash(i, 1) % 7 when 0 then null when 1 then ' '
                        else ['EU', 'US', 'APAC', 'LATAM', 'MEA'][(hash(i, 2) % 5 + 1)::bigint] end as region,
                   timestamptz '2025-01-01 00:00:00+00' as created_at,
                   timestamptz '2025-01-01 00:00:00+00' as updated_at,
                   'r1' as _run_id, now() as _loaded_at
            from range(1, {users} + 1) t(i);
            create table raw.products as
            select i::bigint as id, 'SKU' || i as sku, 'Product ' || i as name,
                   case when i % 50 = 0 then null
                        else ['books', 'toys', 'garden', 'Zeta', 'alpha'][(hash(i) % 5 + 1)::bigint] end
                       as category,
                   ((hash(i, 3) % 10000)::bigint / 100.0 + 1)::decimal(12, 2) as price,
                   timestamptz '2025-01-01 00:00:00+00' as updated_at,
                   'r1' as _run_id, now() as _loaded_at
            from range(1, 1001) t(i);
            create table raw.orders as
            select i::bigint as id, (hash(i, 4) % {users} + 1)::bigint as user_id,
                   ['pending', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded'][(hash(i, 5) % 6 + 1)::bigint] as status,
                   ['USD', 'EUR', 'GBP', 'JPY', 'CHF'][(hash(i, 6) % 5 + 1)::bigint] as currency,
                   ((hash(i, 7) % 100000)::bigint / 100.0)::decimal(12, 2) as total,
                   to_timestamp(1735689600 + floor(i * {days} * 86400.0 / {orders}))
                       as created_at,
                   to_timestamp(1735689600 + floor(i * {days} * 86400.0 / {orders}))
                       as updated_at,
                   'r1' as _run_id, now() as _loaded_at
            from range(1, {orders} + 1) t(i);
            create table raw.order_items as
            select (o.id * 4 + k)::bigint as id, o.id as order_id,
                   (hash(o.id, k) % 1010 + 1)::bigint as product_id,
                   (hash(o.id, k, 1) % 5 + 1)::bigint as quantity,
                   ((hash(o.id, k, 2) % 20000)::bigint / 100.0)::decimal(12, 2) as unit_price,
                   o.updated_at, 'r1' as _run_id, now() as _loaded_at
            from raw.orders o, range(0, 4) r(k)
            where k < hash(o.id, 8) % 4;
            create table raw.payments as
            select 'p' || id as id, id as order_id, total::decimal(18, 2) as amount, currency,
                   'succeeded' as status, 'card' as method, created_at, updated_at,
                   'r1' as _run_id, now() as _loaded_at
            from raw.orders where id % 2 = 0;
            create table raw.fx_rates as
            select (date '2025-01-01' + d::integer)::date as rate_date, 'USD' as base, c.currency,
                   case c.currency when 'USD' then 1
                        else (c.base_rate * (1 + ((hash(d, c.currency) % 200)::bigint - 100) / 10000.0))
                   end::decimal(38, 18) as rate,
                   'r1' as _run_id, now() as _loaded_at
            from range(0, {days} + 2) t(d),
                 (values ('USD', 1.0), ('EUR', 0.92), ('GBP', 0.79), ('JPY', 151.3),
                         ('CHF', 0.88)) c(currency, base_rate);
        """)  # fmt: skip
    finally:
        con.close()


def change_recent_orders(path: Path, orders: int, share: float, run_id: str) -> int:
    """Update status/updated_at of the newest `share` of orders; record their days."""
    changed = max(int(orders * share), 1)
    con = duckdb.connect(str(path))
    try:
        con.execute("set TimeZone = 'UTC'")
        con.execute(
            "update raw.orders set status = case status when 'paid' then 'shipped' "
            "else 'delivered' end, updated_at = now(), _run_id = ? where id > ?",
            [run_id, orders - changed],
        )
        con.execute(
            "insert into ops.restated_days select distinct ?, cast(created_at as date), "
            "'order_changed' from raw.orders where id > ?",
            [run_id, orders - changed],
        )
        days = con.execute(
            "select count(*) from ops.restated_days where run_id = ?", [run_id]
        ).fetchone()
    finally:
        con.close()
    return int(days[0]) if days else 0


def run_compiled_chain(path: Path, manifest: dict, database: str) -> float:
    """The compiled chain (views for staging/intermediate, tables for marts), timed."""
    nodes = {n["name"]: n for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    con = duckdb.connect(str(path))
    try:
        con.execute("set TimeZone = 'UTC'")
        for schema in ("staging", "intermediate", "marts", "analytics"):
            con.execute(f"create schema if not exists {schema}")
        started = time.perf_counter()
        for name in CHAIN:
            node = nodes[name]
            kind = "view" if node["config"]["materialized"] == "view" else "table"
            relation = f'"{node["schema"]}"."{node["alias"]}"'
            sql = node["compiled_code"].replace(f'"{database}".', "")
            con.execute(f"create or replace {kind} {relation} as {sql}")
        return time.perf_counter() - started
    finally:
        con.close()


def reader_during(published: Path, stop: threading.Event, latencies: list[float]) -> None:
    """A reader connected before the swap, querying until told to stop."""
    con = duckdb.connect(str(published), read_only=True)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            con.execute("select count(*), sum(order_count) from analytics.sales_summary").fetchall()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.001)
    finally:
        con.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--changed", type=float, default=0.01, help="share of orders changed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-dbt-") as tmp:
        tmp_path = Path(tmp)
        warehouse = tmp_path / "warehouse.duckdb"
        started = time.perf_counter()
        make_raw(warehouse, args.orders, args.days)
        print(f"raw tables: {args.orders} orders in {time.perf_counter() - started:.1f}s")
        raw_copy = tmp_path / "rawsql.duckdb"
        shutil.copyfile(warehouse, raw_copy)

        # (a) full dbt build (models + snapshot + tests)
        started = time.perf_counter()
        full = dbt_build(warehouse, "UTC")
        full_s = time.perf_counter() - started
        print(f"(a) full dbt build: {full_s:.2f}s (dbt elapsed {full.elapsed:.2f}s)")
        print(f"    slowest: {full.summary()['slowest']}")

        # (b) the compiled chain straight in DuckDB (same SQL dbt ran for the full build)
        run_dbt(
            ["compile", "--select", "+sales_summary"],
            project_dir=DEFAULT_PROJECT_DIR,
            target="duckdb",
            vars={"report_tz": "UTC", "through_date": None, "run_id": None},
            warehouse_path=warehouse,
        )
        manifest = json.loads((DEFAULT_PROJECT_DIR / "target" / "manifest.json").read_text())
        raw_sql_s = run_compiled_chain(raw_copy, manifest, warehouse.stem)
        print(f"(b) raw SQL chain: {raw_sql_s:.2f}s -> dbt overhead {full_s / raw_sql_s:.2f}x")

        # (c) incremental build after a 1% change
        days = change_recent_orders(warehouse, args.orders, args.changed, "bench-r2")
        started = time.perf_counter()
        dbt_build(warehouse, "UTC", run_id="bench-r2")
        incr_s = time.perf_counter() - started
        incr_share = incr_s / full_s
        print(f"(c) incremental build ({days} restated days): {incr_s:.2f}s = {incr_share:.3f}")

        # (d) publish: begin_build copy + atomic swap, with a reader connected before it
        published = tmp_path / "published.duckdb"
        shutil.copyfile(warehouse, published)
        stop, latencies = threading.Event(), []
        reader = threading.Thread(target=reader_during, args=(published, stop, latencies))
        reader.start()
        time.sleep(0.05)
        started = time.perf_counter()
        build = begin_build(published, "bench")
        copy_s = time.perf_counter() - started
        publish_s = publish_build(build, published)
        time.sleep(0.05)
        stop.set()
        reader.join()
        reader_max_ms = max(latencies) * 1000 if latencies else float("nan")
        print(
            f"(d) publish: copy {copy_s:.2f}s, swap {publish_s:.4f}s; reader ran "
            f"{len(latencies)} queries, slowest {reader_max_ms:.1f}ms (never blocked)"
        )
        print(
            f"BENCH dbt full_s={full_s:.2f} raw_sql_s={raw_sql_s:.2f} "
            f"incr_share={incr_share:.3f} publish_s={publish_s:.4f} "
            f"overhead={full_s / raw_sql_s:.2f} copy_s={copy_s:.2f} "
            f"reader_max_ms={reader_max_ms:.1f} orders={args.orders}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
