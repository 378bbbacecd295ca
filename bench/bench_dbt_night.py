"""How the incremental dbt night grows with history: the same change at several sizes.

Usage: python bench/bench_dbt_night.py [--orders 200000,1000000] [--changed 10000]

For each history size: raw tables as bench/bench_dbt.py generates them (DuckDB SQL only),
a first nightly `dbt build` (run bench-r1, built in full), then one night's change written
as warehouse/load.py records it (run bench-r2): `--changed` orders, of which 10% new (two
items each) and the rest late status updates spread over the whole history, 5% as many
order items deleted at the source (ops.deleted_rows) and one product's price revised
(loaded, category unchanged), with ops.restated_orders / ops.restated_days for every order
they touch. The incremental `dbt build` of that night runs in a child process (its wall
seconds and peak RSS, dbt included, are the night's alone):

    BENCH dbt_night orders=<n> seconds=<s> cpu_s=<s> fct_models_s=<s> peak_rss_mib=<m>

(cpu_s: the CPU seconds of the build, dbt's process included, which a busy machine
inflates far less than wall time; fct_models_s: the time dbt reports for the fct_
models) and, at the end, the ratios of the largest to the smallest size. `--baseline` adds the same
night on a copy without ops.deleted_rows (the marts then compare their whole key sets and
every stored item's category, as before the loader's deletes were used):
`BENCH dbt_night_baseline ...`.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dbt import make_raw  # noqa: E402

from warehouse.backends.duckdb import connect  # noqa: E402
from warehouse.dbt_runner import BuildPlan, dbt_build  # noqa: E402

DAYS = 365
THROUGH = "2025-12-31"


def add_ops_tables(path: Path) -> None:
    """The ops tables warehouse/load.py keeps beside ops.restated_days."""
    con = connect(path, memory_limit=None)
    try:
        con.execute("""
            create table ops.restated_orders (
                run_id varchar not null, order_id bigint not null, business_date date not null);
            create table ops.deleted_rows (
                run_id varchar not null, table_name varchar not null, key varchar not null,
                deleted_at timestamptz not null);
        """)  # fmt: skip
    finally:
        con.close()


def apply_night(path: Path, orders: int, changed: int, run_id: str) -> dict[str, int]:
    """One night's change, recorded as the loader records it (see the module docstring)."""
    new = changed // 10
    updated = changed - new
    deleted = max(changed // 20, 1)
    con = connect(path, memory_limit=None)
    try:
        con.execute(
            "create temp table touched (order_id bigint, reason varchar); "
            "create temp table gone (id bigint, order_id bigint)"
        )
        # late status updates, spread evenly over the history
        step = max(orders // updated, 1)
        con.execute(
            "insert into touched select id, 'order_changed' from raw.orders "
            "where id % ? = 0 limit ?",
            [step, updated],
        )
        con.execute(
            "update raw.orders set status = case status when 'paid' then 'shipped' "
            "else 'delivered' end, updated_at = now(), _run_id = ? "
            "where id in (select order_id from touched)",
            [run_id],
        )
        # new orders on the last day, two items each
        con.execute(
            """
            insert into raw.orders
            select ? + i, (hash(i, 4) % 1000 + 1)::bigint, 'paid', 'USD', 10.00,
                   timestamptz '2025-12-31 12:00:00+00', timestamptz '2025-12-31 12:00:00+00',
                   ?, now()
            from range(1, ? + 1) t(i)
            """,
            [orders, run_id, new],
        )
        con.execute(
            "insert into raw.order_items select (o.id * 4 + k)::bigint, o.id, "
            "(hash(o.id, k) % 1000 + 1)::bigint, 1, 5.00, o.updated_at, ?, now() "
            "from raw.orders o, range(0, 2) r(k) where o.id > ?",
            [run_id, orders],
        )
        con.execute(
            "insert into touched select id, 'order_new' from raw.orders where id > ?", [orders]
        )
        # items deleted at the source, spread over the history
        step = max(orders // deleted, 1)
        con.execute(
            "insert into gone select id, order_id from raw.order_items "
            "where order_id % ? = 1 and order_id <= ? limit ?",
            [step, orders, deleted],
        )
        con.execute("delete from raw.order_items where id in (select id from gone)")
        con.execute(
            "insert into ops.deleted_rows select ?, 'order_items', cast(id as varchar), now() "
            "from gone",
            [run_id],
        )
        con.execute("insert into touched select order_id, 'item_deleted' from gone")
        # a product's price revised: loaded by the run, its category unchanged
        con.execute("update raw.products set price = price + 1, _run_id = ? where id = 7", [run_id])
        con.execute(
            """
            insert into ops.restated_orders
            select distinct ?, t.order_id, cast(o.created_at as date)
            from touched t join raw.orders o on o.id = t.order_id
            """,
            [run_id],
        )
        con.execute(
            """
            insert into ops.restated_days
            select distinct ?, cast(o.created_at as date), t.reason
            from touched t join raw.orders o on o.id = t.order_id
            """,
            [run_id],
        )
        counts = con.execute(
            "select (select count(distinct order_id) from touched), (select count(*) from gone)"
        ).fetchone()
    finally:
        con.close()
    assert counts is not None
    return {"orders": int(counts[0]), "deleted_items": int(counts[1])}


def measure(path: Path, run_id: str, target_dir: Path) -> dict[str, float]:
    """Child process: the night's `dbt build` (as pipeline/nightly.py calls it)."""
    started = time.perf_counter()
    result = dbt_build(
        path, BuildPlan("UTC", THROUGH, run_id=run_id, target_dir=target_dir, unit_tests=False)
    )
    seconds = time.perf_counter() - started
    own, children = (
        resource.getrusage(r) for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    cpu_s = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    slowest = " ".join(f"{n.name}={n.execution_time:.2f}" for n in result.slowest(6))
    marts = sum(n.execution_time for n in result.nodes if n.name.startswith("fct_"))
    return {
        "seconds": seconds,
        "cpu_s": cpu_s,
        "fct_s": marts,
        "peak_rss_mib": max(own.ru_maxrss, children.ru_maxrss) / 1024,
        "slowest": slowest,
    }


def measure_in_child(path: Path, run_id: str, target_dir: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", str(path), run_id, str(target_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", default="200000,1000000")
    parser.add_argument("--changed", type=int, default=10_000)
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--measure", nargs=3, metavar=("PATH", "RUN_ID", "TARGET_DIR"))
    args = parser.parse_args()
    if args.measure:
        path, run_id, target_dir = args.measure
        print(json.dumps(measure(Path(path), run_id, Path(target_dir))))
        return 0
    sizes = [int(n) for n in args.orders.split(",")]
    nights: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_dbt_night_") as tmp:
        for orders in sizes:
            base = Path(tmp) / str(orders)
            base.mkdir()
            target_dir = base / "target"
            path = base / "warehouse.duckdb"
            make_raw(path, orders, DAYS)
            add_ops_tables(path)
            started = time.perf_counter()
            plan = BuildPlan(
                "UTC", THROUGH, run_id="bench-r1", target_dir=target_dir, unit_tests=False
            )
            dbt_build(path, plan)
            full_s = time.perf_counter() - started
            change = apply_night(path, orders, args.changed, "bench-r2")
            copy = base / "baseline.duckdb"
            if args.baseline:
                shutil.copy(path, copy)
            night = measure_in_child(path, "bench-r2", target_dir)
            nights[orders] = night
            print(
                f"BENCH dbt_night orders={orders} seconds={night['seconds']:.2f} "
                f"cpu_s={night['cpu_s']:.2f} fct_models_s={night['fct_s']:.2f} "
                f"peak_rss_mib={night['peak_rss_mib']:.0f} full_build_s={full_s:.2f} "
                f"changed_orders={change['orders']} deleted_items={change['deleted_items']}",
                flush=True,
            )
            print(f"  slowest nodes (s): {night.get('slowest', '')}", flush=True)
            if args.baseline:
                con = connect(copy, memory_limit=None)
                try:
                    con.execute("drop table ops.deleted_rows")
                finally:
                    con.close()
                old = measure_in_child(copy, "bench-r2", target_dir)
                print(
                    f"BENCH dbt_night_baseline orders={orders} seconds={old['seconds']:.2f} "
                    f"cpu_s={old['cpu_s']:.2f} fct_models_s={old['fct_s']:.2f} "
                    f"peak_rss_mib={old['peak_rss_mib']:.0f}",
                    flush=True,
                )
                print(f"  slowest nodes (s): {old.get('slowest', '')}", flush=True)
            shutil.rmtree(base, ignore_errors=True)
    small, large = min(sizes), max(sizes)
    print(
        f"BENCH dbt_night_ratio orders={large}/{small} "
        + " ".join(
            f"{key}_ratio={nights[large][key] / nights[small][key]:.2f}"
            for key in ("seconds", "cpu_s", "fct_s")
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
