"""The curve: the same incremental night on histories of 1M, 5M, 20M orders.

Usage: python bench/bench_scale.py [--sizes 1000000,5000000,20000000] [--night-orders 8000]
Sizes also from BENCH_SCALE_SIZES; admin URL from NIGHTSHIFT_BENCH_PG_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/postgres).

For each size (history of N orders over --days days, seed 42):
  source   the PostgreSQL template `nightshift_bench_wh_src_<N>` and its payments file,
           generated once and cached by bench/bench_warehouse.py's prepare_source (the
           same cache: either bench makes it for the other);
  history  night 1 (`python -m pipeline.nightly --date <last day>`, a full load, with
           DuckDB at BENCH_SCALE_HISTORY_MEMORY_LIMIT, 3GB: a full build tests every
           row) on a clone of it, once: its data dir (the published DuckDB warehouse, landing,
           runs) is cached under data/bench/scale/<N>/ and copied for every measurement.
           Its payments API serves only the payments updated in the last
           --history-payment-days (2) days: the demo API pages 500 records at a time, a
           full first read would take hours at 20M (raw.payments then holds those, not
           every payment: the one table whose history is short);
  change   `demo.generator.apply_next_day(orders_per_day=--night-orders)` on a fresh
           clone with the name and oid of the database night 1 read (the extract's
           source identity: another oid would read as a source switch, a full read)
           (seed 43): --night-orders new orders, 5% more late ones (created 1-5
           days earlier), ~700 status updates of old orders, 5% as many item deletes,
           a few category and region moves: about 10,000 changed or new orders whatever
           the history (the same change at every size);
  night    the real steps in the DAG's order, each in a fresh child process (as Airflow
           runs them): extract_source_db, load_source_db, extract_payments_api,
           load_payments_api, dbt_build, transform_daily_sales, check_parity, publish,
           build_report; the payments API is demo.run.running_api on loopback.

Stage seconds are the steps' own timings (pipeline.run_metrics, imports excluded):
extract = both extracts, load = both loads (their quality gates on the landed delta
included, and load_source_db's begin_build: the copy of the published warehouse file),
gates = check_parity (the ETL <-> ELT gate over the build), dbt, etl =
transform_daily_sales, publish, report. Peak memory per stage is the largest
process of the step's child tree (the child's VmHWM and its waited-for descendants' such
as dbt, reported by the child: wait4's ru_maxrss would keep this parent's mark across
fork and exec); the PostgreSQL server's memory is not counted.
Ends with one line per size:
BENCH night orders=N total_s=… extract_s=… load_s=… gates_s=… dbt_s=… etl_s=… publish_s=…
report_s=… peak_rss_mib=…
and draws docs/bench-scale.png (--png): seconds per stage against history size, their ratio
to the smallest size beside the 1.3x target, peak memory per stage beside 1 GiB.
The line also gives dbt's own elapsed time (dbt_elapsed_s: the dbt step without the
project's parse, which the first night of a run may pay in full when dbt's partial-parse
state is cold) and the build copy's seconds (build_copy_s, inside load).
The machine may be shared: seconds are noisy, ratios between sizes in one run less so;
each night's 1-minute load average before and after is kept in the --json file.
--warmup runs one unreported night on the smallest size first (otherwise the first night
alone pays a cold dbt parse and cold caches). --prepare-only for one size can run in its
own process beside a measurement given --wait-prepared: the measurement then waits for that
history instead of making it a second time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere
sys.path.insert(0, str(ROOT / "bench"))

import bench_warehouse as bw  # noqa: E402

CACHE_DIR = ROOT / "data" / "bench" / "scale"
# night 1 is a full build that tests every row of the history: at 20M orders more than
# DuckDB's default 512MB (the measured nights run at the caller's setting)
HISTORY_MEMORY_LIMIT = os.environ.get("BENCH_SCALE_HISTORY_MEMORY_LIMIT", "3GB")
DEFAULT_SIZES = "1000000,5000000,20000000"
TOKEN = "bench-token"
STEPS = (
    "extract_source_db",
    "load_source_db",
    "extract_payments_api",
    "load_payments_api",
    "dbt_build",
    "transform_daily_sales",
    "check_parity",
    "publish",
    "build_report",
)
STAGES = {
    "extract": ("extract_source_db", "extract_payments_api"),
    "load": ("load_source_db", "load_payments_api"),
    "gates": ("check_parity",),
    "dbt": ("dbt_build",),
    "etl": ("transform_daily_sales",),
    "publish": ("publish",),
    "report": ("build_report",),
}


# ----------------------------------------------------------------------------- child


def child_step(step: str, day: date, inputs: Path, output: Path) -> None:
    """Run one step of the night (this process is the step's fresh child)."""
    import logging

    from pipeline import nightly

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    given = json.loads(inputs.read_text()) if inputs.exists() else {}
    fn = getattr(nightly, step)
    if step == "extract_source_db":
        result = fn(day, False)
    elif step in ("publish", "build_report"):
        steps = nightly.NightSteps(
            given["extract_source_db"],
            given["load_source_db"],
            given["extract_payments_api"],
            given["load_payments_api"],
            given["transform_daily_sales"],
            given["check_parity"],
        )
        result = fn(day, nightly.run_stats(day, steps))
    else:
        result = fn(day)
    output.write_text(json.dumps(result, default=str))
    output.with_suffix(".peak").write_text(str(_peak_kib()))


def _peak_kib() -> int:
    """Peak RSS (KiB) of this process and of the children it waited for (dbt): VmHWM
    for itself, since the ru_maxrss its parent gets from wait4 keeps the parent's own
    high-water mark across fork and exec; a child's ru_maxrss holds this process's mark
    at the fork at most, which VmHWM already counts."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1])
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


# ----------------------------------------------------------------------------- parent


def _env(source: str, data_dir: Path, work: Path, api: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AIRFLOW_CONN_SOURCE_DB": source,
        "NIGHTSHIFT_DATA_DIR": str(data_dir),
        "REPORT_TZ": bw.REPORT_TZ,
        "NIGHTSHIFT_NO_AIRFLOW_LOOKUP": "1",
        "AIRFLOW_HOME": str(work / "airflow"),
    }
    for name in ("AIRFLOW_CONN_WAREHOUSE", "WAREHOUSE_PATH", "DBT_TARGET", "LANDING_DIR"):
        env.pop(name, None)
    if api is not None:
        env["AIRFLOW_CONN_PAYMENTS_API"] = api
    return env


def _history_key(orders: int, days: int, payment_days: int) -> str:
    return bw.source_key(orders, days, bw.end_date()) + f" history_payment_days={payment_days}"


def _code_version() -> str:
    """The commit the night ran, and whether the tree differed from it: histories made by
    different code are not comparable (delete data/bench/scale/<N>/ to remake one)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    return (head.stdout.strip() or "no git") + (
        " with local changes" if dirty.stdout.strip() else ""
    )


def wait_for_history(orders: int, days: int, payment_days: int, wait_s: float) -> None:
    """Wait up to `wait_s` for another process's --prepare-only to cache this history
    (a measurement started meanwhile would otherwise build it a second time, over the
    other's half-made template). Returns at once when it is cached or wait_s is 0."""
    key = _history_key(orders, days, payment_days)
    marker = CACHE_DIR / str(orders) / "key"
    deadline = time.monotonic() + wait_s
    announced = False
    while not (marker.is_file() and marker.read_text() == key):
        if time.monotonic() >= deadline:
            return  # not cached: history() makes it
        if not announced:
            print(f"waiting for the history of {orders} ({marker})", file=sys.stderr)
            announced = True
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))


def history(
    admin: str, orders: int, days: int, timeout_s: float, payment_days: int, workers: int = 1
) -> tuple[Path, Path, date, str]:
    """(cached data dir after night 1, payments file, last day, template): night 1 run
    once per size and parameters, then reused. `payment_days` > 0: night 1's payments
    API serves only the payments updated in the history's last `payment_days` days."""
    import sqlite3
    from datetime import timedelta

    from demo.run import running_api

    template, payments, end = bw.prepare_source(admin, orders, days, workers)
    key = _history_key(orders, days, payment_days)
    cache = CACHE_DIR / str(orders)
    if (
        (cache / "key").is_file()
        and (cache / "key").read_text() == key
        and (cache / "source_oid").is_file()
    ):
        code = (cache / "code").read_text() if (cache / "code").is_file() else "unknown"
        print(f"reusing the history night of {orders} ({code}): {cache}", file=sys.stderr)
        return cache / "data", payments, end, template
    shutil.rmtree(cache, ignore_errors=True)
    building = cache.with_name(f"{orders}.tmp")
    shutil.rmtree(building, ignore_errors=True)
    (building / "data").mkdir(parents=True)
    source, oid = clone_as(admin, template, f"{template}_scale")
    (building / "source_oid").write_text(str(oid))
    pay = building / "payments.db"
    shutil.copyfile(payments, pay)
    if payment_days > 0:
        since = (end - timedelta(days=payment_days - 1)).isoformat()
        with sqlite3.connect(pay) as db:
            gone = db.execute("delete from payments where updated_at < ?", (since,)).rowcount
        print(
            f"history of {orders}: {gone} payments updated before {since} left out", file=sys.stderr
        )
    try:
        with running_api(pay, token=TOKEN) as api:
            env = _env(source, building / "data", building, api)
            env["NIGHTSHIFT_DUCKDB_MEMORY_LIMIT"] = HISTORY_MEMORY_LIMIT
            started = time.perf_counter()
            night = bw.run_night(env, end, building / "night1.log", timeout_s)
            print(
                f"history night {orders} ({end}): {time.perf_counter() - started:.0f}s, "
                f"peak rss {night['peak_rss_mib']:.0f} MiB",
                file=sys.stderr,
            )
    finally:
        bw._drop_db(admin, f"{template}_scale")
    shutil.rmtree(building / "airflow", ignore_errors=True)
    (building / "code").write_text(_code_version())
    (building / "key").write_text(key)
    os.replace(building, cache)
    return cache / "data", payments, end, template


def clone_as(admin: str, template: str, name: str, oid: int | None = None) -> tuple[str, int]:
    """(URL, oid) of a fresh copy of `template` named `name`; `oid`: that database oid
    (PostgreSQL 15+), which with the name makes the source identity the extract checks."""
    from psycopg import sql

    bw._drop_db(admin, name)
    with bw._admin(admin) as conn:
        create = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        if oid is not None:
            create = sql.SQL("{} OID {}").format(create, sql.Literal(oid))
        conn.execute(create)
        row = conn.execute("select oid from pg_database where datname = %s", (name,)).fetchone()
    return bw._db_url(admin, name), int(row[0])


def _run_child(step: str, day: date, env: dict[str, str], work: Path, timeout_s: float) -> dict:
    out = work / f"{step}.json"
    log_path = work / f"{step}.log"
    started = time.perf_counter()
    with open(log_path, "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                step,
                "--date",
                day.isoformat(),
                "--inputs",
                str(work / "inputs.json"),
                "--output",
                str(out),
            ],  # fmt: skip
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            _, status, _ = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            raise
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise RuntimeError(f"step {step} failed ({code}); log {log_path}:\n{tail}")
    record = json.loads((Path(env["NIGHTSHIFT_DATA_DIR"]) / "runs" / day.isoformat() / "steps" / f"{step}.json").read_text())  # fmt: skip
    return {
        "result": json.loads(out.read_text()),
        "seconds": float(record["seconds"]),
        "wall_s": wall,
        "peak_rss_mib": int(out.with_suffix(".peak").read_text()) / 1024,  # KiB on Linux
        "log": log_path.read_text(),
    }


def measure(admin: str, orders: int, args: argparse.Namespace) -> dict[str, Any]:
    """The incremental night after a history of `orders` orders."""
    from demo.generator import apply_next_day
    from demo.run import running_api

    cached, payments, end, template = history(
        admin, orders, args.days, args.night_timeout, args.history_payment_days, args.gen_workers
    )
    work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{orders}-"))
    load_start = os.getloadavg()[0]
    try:
        data_dir = work / "data"
        started = time.perf_counter()
        shutil.copytree(cached, data_dir)
        cache_dir = cached.parent
        # the database night 1 read, as a restore would bring it back: same name and oid,
        # so the same source identity (another oid reads as a source switch: a full read)
        oid = int((cached.parent / "source_oid").read_text())
        source, _ = clone_as(admin, template, f"{template}_scale", oid)
        pay = work / "payments.db"
        shutil.copyfile(payments, pay)
        # the payments store as night 1 read it (the cached template's), plus the change
        prepare_s = time.perf_counter() - started
        started = time.perf_counter()
        change = apply_next_day(
            source.replace("postgresql://", "postgresql+psycopg://", 1),
            seed=bw.NEXT_DAY_SEED,
            payments_db=pay,
            orders_per_day=args.night_orders,
        )
        change_s = time.perf_counter() - started
        day = date.fromisoformat(str(change["date"]))
        changed = (
            change["new_orders"]
            + change["late_orders"]
            + len(change["status_updates"])
            + len(change["deleted_item_ids"])
        )
        print(
            f"{orders}: copied the history in {prepare_s:.0f}s, change of {day} in "
            f"{change_s:.1f}s: {change['new_orders']} new, {change['late_orders']} late, "
            f"{len(change['status_updates'])} status updates, {len(change['deleted_item_ids'])} "
            f"item deletes, {len(change['category_moves'])} category and "
            f"{len(change['region_moves'])} region moves; {len(change['touched_days'])} days "
            "touched",
            file=sys.stderr,
        )
        steps: dict[str, dict] = {}
        inputs: dict[str, Any] = {}
        with running_api(pay, token=TOKEN) as api:
            env = _env(source, data_dir, work, api)
            for step in STEPS:
                (work / "inputs.json").write_text(json.dumps(inputs, default=str))
                steps[step] = _run_child(step, day, env, work, args.night_timeout)
                inputs[step] = steps[step]["result"]
                print(
                    f"  {orders} {step}: {steps[step]['seconds']:.2f}s "
                    f"(child wall {steps[step]['wall_s']:.2f}s) "
                    f"peak {steps[step]['peak_rss_mib']:.0f} MiB",
                    file=sys.stderr,
                )
        logs = args.json.parent / f"logs-{orders}"  # for profiling: each step's own log
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        for step in STEPS:
            (logs / f"{step}.log").write_text(steps[step]["log"])
        copy = re.findall(r"build copy \S+ \(([\d.]+) MiB\) in ([\d.]+)s", steps["load_source_db"]["log"])  # fmt: skip
        warehouse = data_dir / "warehouse.duckdb"
        return {
            "orders": orders,
            "day": day.isoformat(),
            "changed_orders": changed,
            "touched_days": len(change["touched_days"]),
            "restated_days": len(inputs["load_source_db"].get("restated_days", [])),
            "steps": {
                k: {kk: v[kk] for kk in ("seconds", "wall_s", "peak_rss_mib")}
                for k, v in steps.items()
            },
            "build_copy_mib": float(copy[-1][0]) if copy else None,
            "build_copy_s": float(copy[-1][1]) if copy else None,
            "dbt_elapsed_s": inputs["dbt_build"].get("elapsed_s"),
            "dbt_slowest": inputs["dbt_build"].get("slowest", [])[:5],
            "warehouse_mib": warehouse.stat().st_size / 2**20,
            "history_code": (cache_dir / "code").read_text()
            if (cache_dir / "code").is_file()
            else None,
            "code": _code_version(),
            "load_start": load_start,  # 1-minute load average before and after the night
            "load_end": os.getloadavg()[0],
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            bw._drop_db(admin, f"{template}_scale")
        else:
            print(f"kept {work} and {template}_scale", file=sys.stderr)


def stages(night: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """stage -> (seconds, peak RSS MiB)."""
    return {
        stage: (
            sum(night["steps"][s]["seconds"] for s in members),
            max(night["steps"][s]["peak_rss_mib"] for s in members),
        )
        for stage, members in STAGES.items()
    }


def bench_line(night: dict[str, Any]) -> str:
    per = stages(night)
    total = sum(s for s, _ in per.values())
    peak = max(m for _, m in per.values())
    return (
        f"BENCH night orders={night['orders']} total_s={total:.1f} "
        + " ".join(f"{stage}_s={seconds:.2f}" for stage, (seconds, _) in per.items())
        + f" peak_rss_mib={peak:.0f} "
        + " ".join(f"{stage}_rss_mib={rss:.0f}" for stage, (_, rss) in per.items())
        + f" dbt_elapsed_s={night['dbt_elapsed_s'] or float('nan'):.2f}"
        + f" build_copy_s={night['build_copy_s'] or float('nan'):.2f}"
        + f" changed_orders={night['changed_orders']} restated_days={night['restated_days']}"
        f" warehouse_mib={night['warehouse_mib']:.0f}"
    )


def growth_table(nights: list[dict[str, Any]]) -> str:
    base = stages(nights[0])
    head = f"{'stage':10}" + "".join(f"{n['orders'] // 1_000_000:>9}M s" for n in nights)
    head += "".join(f"{str(n['orders'] // 1_000_000) + 'M/1M':>10}" for n in nights[1:])
    lines = [head]
    for stage in STAGES:
        per = [stages(n)[stage][0] for n in nights]
        lines.append(
            f"{stage:10}"
            + "".join(f"{v:>11.2f}" for v in per)
            + "".join(f"{v / base[stage][0] if base[stage][0] else float('nan'):>10.2f}" for v in per[1:])
        )  # fmt: skip
    for label, field in (("  dbt own", "dbt_elapsed_s"), ("  copy", "build_copy_s")):
        per = [float(n[field] or "nan") for n in nights]  # dbt's elapsed; the build copy
        lines.append(
            f"{label:10}"
            + "".join(f"{v:>11.2f}" for v in per)
            + "".join(f"{v / per[0] if per[0] else float('nan'):>10.2f}" for v in per[1:])
        )
    totals = [sum(s for s, _ in stages(n).values()) for n in nights]
    lines.append(
        f"{'total':10}"
        + "".join(f"{v:>11.2f}" for v in totals)
        + "".join(f"{v / totals[0]:>10.2f}" for v in totals[1:])
    )
    return "\n".join(lines)


def draw(nights: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [n["orders"] / 1e6 for n in nights]
    fig, (ax, ratio, mem) = plt.subplots(1, 3, figsize=(17, 5))
    totals = [sum(s for s, _ in stages(n).values()) for n in nights]
    for stage in STAGES:
        per = [stages(n)[stage][0] for n in nights]
        ax.plot(sizes, per, marker="o", label=stage)
        ratio.plot(sizes, [v / per[0] if per[0] else float("nan") for v in per], marker="o", label=stage)  # fmt: skip
        mem.plot(sizes, [stages(n)[stage][1] for n in nights], marker="o", label=stage)
    ax.plot(sizes, totals, marker="s", color="black", label="total")
    ratio.plot(sizes, [v / totals[0] for v in totals], marker="s", color="black", label="total")
    ratio.axhline(1.3, color="red", linestyle="--", linewidth=1, label="1.3x target")
    ratio.set_ylabel(f"seconds / seconds at {sizes[0]:g}M")
    ratio.set_title("Growth against the smallest history")
    for a in (ax, ratio, mem):
        a.set_xscale("log")
    for a in (ax, ratio, mem):
        a.minorticks_off()
        a.set_xlabel("history (million orders)")
        a.set_xticks(sizes, [f"{s:g}M" for s in sizes])
        a.grid(True, alpha=0.3)
    ax.set_ylabel("seconds (the step's own timing)")
    ax.set_title(f"Incremental night (~{nights[0]['changed_orders']:,} changed orders) by stage")
    mem.set_ylabel("peak RSS MiB (largest process of the step)")
    mem.axhline(1024, color="red", linestyle="--", linewidth=1, label="1 GiB target")
    mem.set_title("Peak memory by stage")
    for a in (ax, ratio, mem):
        a.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"drew {png}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=os.environ.get("BENCH_SCALE_SIZES", DEFAULT_SIZES))
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--night-orders", type=int, default=8000)
    parser.add_argument("--night-timeout", type=float, default=7200)
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "bench-scale.png")
    parser.add_argument("--json", type=Path, default=CACHE_DIR / "last.json")
    parser.add_argument(
        "--history-payment-days",
        type=int,
        default=2,
        help="night 1 reads only the payments updated in the history's last N days through "
        "the demo API (0: all; the API pages 500 at a time: ~6 min per million on an idle "
        "2-CPU machine, hours at 20M); the measured night's API holds every payment",
    )
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--gen-workers",
        type=int,
        default=3,
        help="processes generating a source that is not cached (the same rows as one: "
        "bench_warehouse.generate_parallel); 1: demo.generator.generate itself",
    )
    parser.add_argument(
        "--wait-prepared",
        type=float,
        default=0,
        help="seconds to wait for a size's history that another --prepare-only process is "
        "still making, before making it here",
    )
    parser.add_argument(
        "--warmup",
        action="store_true",
        help="first one unreported night on the smallest size: dbt's partial-parse state, "
        "the page cache and the imports are then as warm for the first size as for the others",
    )
    parser.add_argument(
        "--prepare-only", action="store_true", help="make the cached sources and histories only"
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="no run: the lines, table and chart of earlier runs' --json files",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--date", type=date.fromisoformat, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_step(args.child, args.date, args.inputs, args.output)
        return 0
    nights = []
    if args.from_json:
        found = {n["orders"]: n for f in args.from_json for n in json.loads(f.read_text())}
        nights = [found[k] for k in sorted(found)]
        for night in nights:
            print(bench_line(night))
    else:
        admin = os.environ.get("NIGHTSHIFT_BENCH_PG_URL", bw.DEFAULT_ADMIN)
        sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
        load = os.getloadavg()
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs")
        if args.prepare_only:
            for orders in sizes:
                history(
                    admin,
                    orders,
                    args.days,
                    args.night_timeout,
                    args.history_payment_days,
                    args.gen_workers,
                )
            return 0
        if args.warmup:
            print(f"warm-up: {bench_line(measure(admin, sizes[0], args))}", file=sys.stderr)
        for orders in sizes:
            wait_for_history(orders, args.days, args.history_payment_days, args.wait_prepared)
            nights.append(measure(admin, orders, args))
            print(bench_line(nights[-1]), flush=True)
        load = os.getloadavg()
        print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(growth_table(nights))
    for night in nights:
        print(
            f"{night['orders']}: load average {night.get('load_start', float('nan')):.1f} -> "
            f"{night.get('load_end', float('nan')):.1f}, history made by "
            f"{night.get('history_code')}, night by {night.get('code')}, build copy {night['build_copy_mib']} MiB in "
            f"{night['build_copy_s']}s, dbt elapsed {night['dbt_elapsed_s']}s, slowest "
            + ", ".join(f"{n} {s:.2f}s" for n, s in night["dbt_slowest"])
        )
    if not args.from_json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(nights, indent=2, default=str))
    if len(nights) > 1:
        draw(nights, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
