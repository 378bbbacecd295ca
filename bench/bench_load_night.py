"""The load step of one incremental night against history size (`warehouse.load`).

Usage: python bench/bench_load_night.py [--sizes 200000,1000000] [--night-orders 8000]

For each size N: a synthetic history of N orders (~1.5 items each, N/10 users, 1,000
products over 365 days) is landed and loaded into a DuckDB warehouse (night 1, not
timed). Then the same change at every size: --night-orders new orders with their items,
1,500 status updates of old orders spread over the history, 300 item updates, 200 item
hard deletes in the oldest tenth of the history, 20 users and 5 products changed; the
`order_items` key set is landed in full, as the extract lands it. Night 2 runs in a
fresh child process, as the nightly's `load_source_db` step does (DuckDB capped at
NIGHTSHIFT_DUCKDB_MEMORY_LIMIT): the build copy of the published file (`begin_build`),
then `load_source_db` on that build. Prints per size

BENCH load_night orders=N seconds=<build copy + load> build_copy_s=… load_s=…
peak_rss_mib=<the child's> deleted=<order_items rows deleted>

and, with two sizes, the ratio of the largest to the smallest. The machine may be
shared: ratios within one run are the figure to read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DAY0 = "2025-01-01"
DAYS = 365
DELETES = 200


def _land(con, landing: Path, table: str, run_id: str, sql: str, **extra) -> None:
    """One landed run as the loader reads it: Parquet files and `_manifest.json` (written
    here directly: the bench measures the load, not the landing writer)."""
    directory = landing / "source_db" / table / f"run={run_id}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "part-00000.parquet"
    con.execute(f"copy ({sql}) to '{path}' (format parquet)")
    rows = con.execute(f"select count(*) from read_parquet('{path}')").fetchone()[0]
    manifest = {"mode": "incremental", "key": "id", "cursor_key": "updated_at", **extra}
    manifest.update(source="source_db", table=table, run_id=run_id, rows=rows)
    manifest["checksum_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (directory / "_manifest.json").write_text(json.dumps(manifest))


def _history(n: int) -> dict[str, str]:
    """SQL of the history's tables (deterministic in the row ids)."""
    return {
        "users": f"""select i as id, 'r' || (i % 7) as region,
            timestamptz '{DAY0} 00:00:00+00' as updated_at from range(1, {n // 10 + 2}) t(i)""",
        "products": f"""select i as id, 'c' || (i % 13) as category,
            timestamptz '{DAY0} 00:00:00+00' as updated_at from range(1, 1001) t(i)""",
        "orders": f"""select i as id, 1 + i % {n // 10 + 1} as user_id, 'paid' as status,
            'EUR' as currency, cast((i % 997) + 0.5 as decimal(12, 2)) as total,
            timestamptz '{DAY0} 00:00:00+00' + to_seconds(cast(i * {DAYS * 86400 // n} as bigint))
                as created_at,
            timestamptz '{DAY0} 00:00:00+00' + to_seconds(cast(i * {DAYS * 86400 // n} as bigint))
                as updated_at
            from range(1, {n + 1}) t(i)""",
        # item j belongs to order (2j + 2) // 3: 1.5 items an order
        "order_items": f"""select j as id, (2 * j + 2) // 3 as order_id,
            1 + j % 1000 as product_id, cast(1 + j % 3 as bigint) as quantity,
            cast((j % 89) + 0.25 as decimal(12, 2)) as unit_price,
            timestamptz '{DAY0} 00:00:00+00' as updated_at
            from range(1, {n * 3 // 2 + 1}) t(j)""",
    }


def prepare(n: int, night_orders: int, work: Path) -> None:
    """Night 1 loaded and published; night 2 landed."""
    from warehouse.backends.duckdb import DuckDBWarehouse, connect
    from warehouse.load import SourceLoadPlan, load_source_db

    landing = work / "landing"
    con = connect(memory_limit=None)
    end = f"timestamptz '{DAY0} 00:00:00+00' + interval {DAYS} day"
    hist = _history(n)
    w1 = {"window_end": f"{DAY0}T00:00:00+00:00"}
    for table in ("users", "products", "orders"):
        _land(con, landing, table, "night1", hist[table], **w1)
    _land(con, landing, "order_items", "night1", hist["order_items"], reconcile_deletes=True, **w1)
    _land(
        con,
        landing,
        "order_items__keys",
        "night1",
        f"select id from ({hist['order_items']})",
        mode="key_set",
    )
    wh = DuckDBWarehouse(work / "warehouse.duckdb")
    build = wh.begin_build("night1")
    load_source_db(landing, SourceLoadPlan("night1", "UTC", warehouse=wh, build=build))
    wh.publish(build)

    n_items = n * 3 // 2
    step = max(1, n // 1500)
    w2 = {"window_end": "2026-01-02T00:00:00+00:00"}
    new = f"range({n + 1}, {n + night_orders + 1}) t(i)"
    _land(
        con,
        landing,
        "users",
        "night2",
        f"select id, region || 'x' as region, {end} as updated_at from ({hist['users']}) where id % {max(1, n // 200)} = 0",
        **w2,
    )
    _land(
        con,
        landing,
        "products",
        "night2",
        f"select id, category || 'x' as category, {end} as updated_at from ({hist['products']}) where id % 200 = 0",
        **w2,
    )
    _land(
        con,
        landing,
        "orders",
        "night2",
        f"""select id, user_id, 'shipped' as status, currency, total, created_at, {end} as updated_at
            from ({hist["orders"]}) where id % {step} = 0
        union all
        select i, 1 + i % {n // 10 + 1}, 'paid', 'EUR', cast((i % 997) + 0.5 as decimal(12, 2)),
            {end}, {end} from {new}""",
        **w2,
    )
    # new orders' items continue the id sequence; 300 old items updated
    _land(
        con,
        landing,
        "order_items",
        "night2",
        f"""select id, order_id, product_id, quantity + 1 as quantity, unit_price, {end} as updated_at
            from ({hist["order_items"]}) where id % {max(1, n_items // 300)} = 0
        union all
        select {n_items} + i - {n}, i, 1 + i % 1000, 1, cast(2.5 as decimal(12, 2)), {end} from {new}""",
        reconcile_deletes=True,
        **w2,
    )
    # hard deletes in the oldest tenth of the history
    gone = f"id <= {n_items // 10} and id % {max(1, n_items // 10 // DELETES)} = 1"
    _land(
        con,
        landing,
        "order_items__keys",
        "night2",
        f"""select id from range(1, {n_items + night_orders + 1}) t(id) where not ({gone})""",
        mode="key_set",
    )


def night(work: Path) -> dict:
    """Night 2's load step (run in a child process)."""
    from core.settings import duckdb_memory_limit
    from warehouse.backends.duckdb import DuckDBWarehouse
    from warehouse.load import SourceLoadPlan, load_source_db

    # as the nightly opens it: DuckDB capped at NIGHTSHIFT_DUCKDB_MEMORY_LIMIT
    wh = DuckDBWarehouse(work / "warehouse.duckdb", memory_limit=duckdb_memory_limit())
    started = time.perf_counter()
    build = wh.begin_build("night2")
    copied = time.perf_counter()
    result = load_source_db(
        work / "landing", SourceLoadPlan("night2", "UTC", warehouse=wh, build=build)
    )
    done = time.perf_counter()
    return {
        "build_copy_s": copied - started,
        "load_s": done - copied,
        "deleted": result["deleted"]["order_items"],
        "rss_mib": _peak_rss_mib(),
    }


def _peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM, which starts afresh at exec (ru_maxrss would carry
    the parent's peak at fork, here the history's generation)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200000,1000000")
    parser.add_argument("--night-orders", type=int, default=8000)
    parser.add_argument("--repeat", type=int, default=1, help="nights per size (median)")
    parser.add_argument("--night", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.night:
        print(json.dumps(night(Path(args.night))))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    figures = {}
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"bench_load_{n}_"))
        try:
            prepare(n, args.night_orders, work)
            runs = []
            for _ in range(args.repeat):
                trial = work / "trial"
                shutil.rmtree(trial, ignore_errors=True)
                shutil.copytree(work, trial, ignore=shutil.ignore_patterns("trial"))
                out = subprocess.run(
                    [sys.executable, __file__, "--night", str(trial)],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            runs.sort(key=lambda r: r["build_copy_s"] + r["load_s"])
            run = runs[len(runs) // 2]
            figures[n] = run
            print(
                f"BENCH load_night orders={n} seconds={run['build_copy_s'] + run['load_s']:.2f} "
                f"build_copy_s={run['build_copy_s']:.2f} load_s={run['load_s']:.2f} "
                f"peak_rss_mib={run['rss_mib']:.0f} deleted={run['deleted']}",
                flush=True,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if len(sizes) > 1:
        lo, hi = figures[min(sizes)], figures[max(sizes)]
        print(
            f"ratio {max(sizes)}/{min(sizes)}: load {hi['load_s'] / lo['load_s']:.2f} "
            f"total {(hi['load_s'] + hi['build_copy_s']) / (lo['load_s'] + lo['build_copy_s']):.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
