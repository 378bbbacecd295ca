"""Benchmark the ETL path: full-history `daily_sales` (pandas + DuckDB reads) vs plain DuckDB SQL.

Usage: python bench/bench_etl.py [--orders 5000000] [--days 365] [--tz America/New_York]

The raw tables are bench_dbt's (`make_raw`: users, products, orders, ~1.5 items per order,
FX rates), with FX rates quoted to 6 decimals as the API does (plus the day before the
first, which the first orders fall on west of UTC). They are cached in
`data/bench/etl-<orders>-<days>.duckdb` and reused by later runs.

Each side runs in a fresh subprocess (clean peak RSS) on the same file, read-only:
  etl: transform.daily_sales.compute_daily_sales for every day (chunks of business days);
  sql: one DuckDB statement computing the same table (the dbt macros' formulas: business
       day by timezone(), blank rules, top item by (line desc, name), usd_cents_half_up in
       HUGEINT, cents summed).
Both results are written to Parquet and must be equal row for row (else exit 1).
Ends with: BENCH etl ratio_to_sql=<etl_s / sql_s> peak_rss_mib=<etl peak RSS> ...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere
sys.path.insert(0, str(ROOT / "bench"))

from bench_dbt import make_raw  # noqa: E402

from warehouse.backends.duckdb import connect  # noqa: E402

_SQL = """
with
orders_dated as (
    select id, user_id, currency, total, cast(timezone($tz, created_at) as date) as business_date
    from raw.orders
    where status is distinct from 'cancelled'
),
item_lines as (
    select
        items.order_id,
        coalesce(items.quantity * items.unit_price, 0) as line_amount,
        case when products.category is null or regexp_matches(products.category, $blank)
             then 'uncategorized' else products.category end as category
    from raw.order_items as items
    left join raw.products as products on products.id = items.product_id
),
top_item as (
    select order_id, arg_min(category, {'line': -line_amount, 'name': category}) as category
    from item_lines
    group by order_id
),
rates as (
    select rate_date, currency,
           cast(replace(cast(cast(rate as decimal(38, 18)) as varchar), '.', '') as hugeint) as r
    from raw.fx_rates
),
converted as (
    select
        o.business_date,
        case when users.region is null or regexp_matches(users.region, $blank)
             then 'unknown' else users.region end as region,
        coalesce(top_item.category, 'uncategorized') as category,
        cast((2 * cast(round(o.total * 100) as hugeint) * cast(1000000000000000000 as hugeint)
              + rates.r) // (2 * rates.r) as bigint) as usd_cents
    from orders_dated as o
    left join raw.users as users on users.id = o.user_id
    left join top_item on top_item.order_id = o.id
    left join rates on rates.rate_date = o.business_date and rates.currency = o.currency
)
select
    business_date as date,
    region,
    category,
    cast(cast(sum(usd_cents) as decimal(38, 0)) * 0.01 as decimal(18, 2)) as total_sales_usd,
    cast(count(*) as bigint) as order_count
from converted
group by all
order by date, region, category
"""


def dataset(orders: int, days: int) -> Path:
    """The cached raw tables (built once: DuckDB SQL only, ~1 min for 5M orders)."""
    path = ROOT / "data" / "bench" / f"etl-{orders}-{days}.duckdb"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    started = time.perf_counter()
    make_raw(tmp, orders, days)
    con = connect(tmp, memory_limit=None)
    try:
        con.execute("update raw.fx_rates set rate = cast(round(rate, 6) as decimal(38, 18))")
        con.execute(
            "insert into raw.fx_rates select rate_date - 1, base, currency, rate, _run_id, "
            "_loaded_at from raw.fx_rates where rate_date = (select min(rate_date) from raw.fx_rates)"
        )
        con.execute("checkpoint")
    finally:
        con.close()
    os.replace(tmp, path)
    print(f"dataset: {orders} orders built in {time.perf_counter() - started:.1f}s -> {path}")
    return path


def run_side(side: str, warehouse: Path, tz: str, out: Path) -> dict[str, float]:
    """One side, in this (fresh) process: compute, write Parquet, report time and peak RSS."""
    from transform.daily_sales import compute_daily_sales, to_arrow  # imports are not timed

    started = time.perf_counter()
    if side == "etl":
        table = to_arrow(compute_daily_sales(warehouse, tz, None))
    else:
        con = connect(warehouse, read_only=True, memory_limit=None)
        try:
            table = con.sql(_SQL, params={"tz": tz, "blank": "^[ \t\n\r\f\v]*$"}).to_arrow_table()
        finally:
            con.close()
    seconds = time.perf_counter() - started
    pq.write_table(table, out)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "peak_rss_mib": rss_mib, "rows": table.num_rows}


def in_subprocess(side: str, warehouse: Path, tz: str, out: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, __file__, "--side", side, "--warehouse", str(warehouse), "--tz", tz,
         "--out", str(out)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=5_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--tz", default="America/New_York", help="REPORT_TZ of the run")
    parser.add_argument("--side", choices=("etl", "sql"), help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.warehouse, args.tz, args.out)))
        return 0

    warehouse = dataset(args.orders, args.days)
    with tempfile.TemporaryDirectory(prefix="bench-etl-") as tmp:
        outs = {side: Path(tmp) / f"{side}.parquet" for side in ("sql", "etl")}
        runs = {side: in_subprocess(side, warehouse, args.tz, outs[side]) for side in outs}
        for side, run in runs.items():
            print(
                f"{side}: {run['seconds']:.2f}s, peak RSS {run['peak_rss_mib']:.0f} MiB, "
                f"{run['rows']} rows"
            )
        etl, sql = (pq.read_table(outs[s]) for s in ("etl", "sql"))
        if etl.num_rows == 0 or not etl.equals(sql.cast(etl.schema)):
            print("MISMATCH: the ETL result differs from the SQL result", file=sys.stderr)
            return 1
        print(f"results equal: {etl.num_rows} (date, region, category) rows")
    ratio = runs["etl"]["seconds"] / runs["sql"]["seconds"]
    print(
        f"BENCH etl ratio_to_sql={ratio:.2f} peak_rss_mib={runs['etl']['peak_rss_mib']:.0f} "
        f"etl_s={runs['etl']['seconds']:.2f} sql_s={runs['sql']['seconds']:.2f} "
        f"sql_peak_rss_mib={runs['sql']['peak_rss_mib']:.0f} orders={args.orders}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
