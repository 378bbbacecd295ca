"""Benchmark the ETL step of an incremental night against history size.

Usage: python bench/bench_etl_night.py [--sizes 200000,1000000] [--days 60]

For each history size (bench_etl's cached raw tables, `--days` business days long) the
warehouse is copied, built in full once (not timed), and one night's change is written
into a run's build the way the loader leaves it: the same change at every size (6,000
updated orders spread over the whole history: status, total and business day; 3,000 new
orders, a third of them late; the items of 1,000 orders deleted), with the old and new
business day of every changed order in `ops.restated_orders`.

The step (plan_daily_sales + compute_daily_sales + publish_daily_sales in the build, as
pipeline/nightly.py runs it) is timed in a fresh process (clean peak RSS), twice:
  delta: the days the night's orders explain are adjusted by those orders;
  days:  every restated day recomputed from all its orders (the plan without delta days).
After each, the build's table must equal a full recomputation (else exit 1).
Prints `BENCH etl_night orders=… mode=… seconds=… peak_rss_mib=…` per size and mode, then
`BENCH etl_night ratio …` (largest / smallest history, same mode).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere
sys.path.insert(0, str(ROOT / "bench"))

TZ = "America/New_York"
RUN = "bench-n2"
UPDATED, NEW, ITEMS_DELETED = 6_000, 3_000, 1_000

_OPS = """
create table if not exists ops.restated_orders (
    run_id varchar not null, order_id bigint not null, business_date date not null);
create table if not exists ops.deleted_rows (
    run_id varchar not null, table_name varchar not null, key varchar not null,
    deleted_at timestamptz not null);
"""


def _record(s, ids_sql: str, reason: str) -> None:
    """The loader's record of changed orders: their business day in the current state."""
    pairs = (
        f"select o.id, cast(timezone('{TZ}', o.created_at) as date) as d "
        f"from raw.orders o where o.id in ({ids_sql})"
    )
    s.execute(f"insert into ops.restated_orders select ?, id, d from ({pairs})", [RUN])
    s.execute(
        f"insert into ops.restated_days select distinct ?, d, ? from ({pairs})", [RUN, reason]
    )


def night(wh, orders: int) -> None:
    """The same change at every history size, written into the run's build."""
    build = wh.begin_build(RUN)
    step = orders // UPDATED
    with wh.transaction(build) as s:
        s.execute(_OPS)
        top = s.fetchone("select max(id) from raw.orders")[0]
        last = s.fetchone("select max(created_at) from raw.orders")[0]
        updated = f"select 1 + k * {step} from range(0, {UPDATED}) t(k)"
        emptied = f"select 3 + k * {orders // ITEMS_DELETED} from range(0, {ITEMS_DELETED}) t(k)"
        _record(s, updated, "order_changed")
        _record(s, emptied, "item_deleted")
        s.execute(
            "update raw.orders set status = case when id % 3 = 0 then 'cancelled' else 'paid' end, "
            "total = total + 1, created_at = created_at + to_hours(cast(id % 30 as bigint)) "
            f"where id in ({updated})"
        )
        s.execute(
            "insert into ops.deleted_rows select ?, 'order_items', cast(id as varchar), now() "
            f"from raw.order_items where order_id in ({emptied})",
            [RUN],
        )
        s.execute(f"delete from raw.order_items where order_id in ({emptied})")
        s.execute(
            "insert into raw.orders select id + ?, user_id, 'paid', currency, total, "
            "case when k % 3 = 0 then created_at else ? end, ?, ?, now() "
            f"from raw.orders, range(0, 1) t(k) where id <= {NEW}",
            [top, last, last, RUN],
        )
        s.execute(
            "insert into raw.order_items select id + ?, order_id + ?, product_id, quantity, "
            f"unit_price, updated_at, ?, now() from raw.order_items where order_id <= {NEW}",
            [4 * top, top, RUN],
        )
        _record(s, updated, "order_changed")
        _record(s, emptied, "item_deleted")
        _record(s, f"select id from raw.orders where id > {top}", "order_new")


def run_step(warehouse: Path, mode: str, through: date) -> dict:
    """The ETL step in this (fresh) process: plan, compute, publish into the build."""
    from transform.daily_sales import compute_daily_sales, plan_daily_sales, publish_daily_sales
    from warehouse.backends.duckdb import DuckDBWarehouse

    wh = DuckDBWarehouse(warehouse)
    build = wh.open_build(RUN)
    started = time.perf_counter()
    plan = plan_daily_sales(wh, TZ, through, RUN, build=build)
    if mode == "days":
        plan = dataclasses.replace(plan, delta_days=[], orders=())
    frame = compute_daily_sales(wh, TZ, through, build=build, plan=plan)
    publish_daily_sales(frame, wh, plan, build=build)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), **plan.summary()}


def peak_rss_mib() -> float:
    """This process's peak RSS since it started its program: VmHWM (ru_maxrss would
    keep the high-water mark of the parent it was forked from, across exec)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_subprocess(warehouse: Path, mode: str, through: date) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--step", mode, "--warehouse", str(warehouse),
         "--through", through.isoformat()],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_size(orders: int, days: int, tmp: Path) -> dict[str, dict]:
    from bench_etl import dataset  # the timed child processes do not import it

    from transform.daily_sales import compute_daily_sales, plan_daily_sales, publish_daily_sales
    from warehouse.backends.duckdb import DuckDBWarehouse

    warehouse = tmp / f"warehouse-{orders}.duckdb"
    shutil.copyfile(dataset(orders, days), warehouse)
    wh = DuckDBWarehouse(warehouse)
    started = time.perf_counter()
    with wh.transaction() as s:
        last = s.fetchone(f"select cast(max(timezone('{TZ}', created_at)) as date) from raw.orders")
    through = last[0]
    plan = plan_daily_sales(wh, TZ, through, "bench-n1")
    publish_daily_sales(compute_daily_sales(wh, TZ, through, plan=plan), wh, plan)
    print(f"orders={orders}: night 1 (full) {time.perf_counter() - started:.1f}s", flush=True)
    night(wh, orders)
    build = wh.open_build(RUN)
    expected = None
    results = {}
    for mode in ("delta", "days"):
        results[mode] = run = in_subprocess(warehouse, mode, through)
        got = wh.read_arrow(
            "select * from {analytics}.daily_sales order by date, region, category", build=build
        )
        if expected is None:
            expected = compute_daily_sales(wh, TZ, through, build=build)
        if got.to_pydict() != {c: list(expected[c]) for c in expected.columns}:
            print(f"MISMATCH: {mode} night differs from a full rebuild", file=sys.stderr)
            raise SystemExit(1)
        print(
            f"BENCH etl_night orders={orders} mode={mode} seconds={run['seconds']:.2f} "
            f"peak_rss_mib={run['peak_rss_mib']:.0f} days={run['days']} "
            f"delta_days={run['delta_days']} night_orders={run['orders']}",
            flush=True,
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200000,1000000")
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--step", choices=("delta", "days"), help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--through", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.warehouse, args.step, date.fromisoformat(args.through))))
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-etl-night-", dir=ROOT / "data") as tmp:
        runs = {n: bench_size(n, args.days, Path(tmp)) for n in sizes}
    small, large = min(sizes), max(sizes)
    for mode in ("delta", "days"):
        a, b = runs[small][mode], runs[large][mode]
        print(
            f"BENCH etl_night ratio mode={mode} orders={large}/{small} "
            f"seconds={b['seconds'] / a['seconds']:.2f} "
            f"peak_rss_mib={b['peak_rss_mib']:.0f}/{a['peak_rss_mib']:.0f}"
        )
    d, f = runs[large]["delta"], runs[large]["days"]
    print(f"BENCH etl_night delta_vs_days orders={large} seconds={d['seconds'] / f['seconds']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
