"""Benchmark the fixed costs of a demo-sized night , step by step.

Usage: python bench/bench_night_fixed.py [--days 60] [--orders-per-day 1000] [--nights 2]
                                         [--variants baseline,new,new_inproc]

The demo source (`demo.generator`, 60 days x 1000 orders = 60k orders by default, SQLite,
the demo payments API on loopback) is generated once and cached in
`data/bench/night_fixed/`. Each variant runs `--nights` nights of the same business day on
a fresh data dir of its own (night 1: the demo night on an empty warehouse; night 2: a
rerun, what dbt's partial parse sees on every later night), the variants taking turns
night by night (a busy machine slows them alike). Every step runs in its own Python
process, as a real executor (LocalExecutor / Celery) runs the DAG's tasks, with what a
task process has imported before its step (airflow.sdk, the DAG file's modules); the
figures are the per-step seconds the night records (`data/runs/<day>/steps/*.json`, what
`ops.task_metrics` stores), not wall clock, and each step process's CPU seconds (its
children, dbt's process, included: steadier than seconds on a busy machine):

  baseline:   the extracts one after the other (the DAG's earlier shape), dbt without
              partial parsing (`DBT_PARTIAL_PARSE=false`), Great Expectations imported by
              dbt_build (as quality/results.py did before; `BENCH_EAGER_GX=1`);
  new:        `extract_source_db` and `extract_payments_api` at the same time (the DAG's
              shape now), dbt's partial parse kept across nights (the night's own dbt
              target dir, as `dbt_project/target` is for the nightly; the per-night
              settings read only when dbt executes), GX imported only where a step
              validates;
  new_inproc: new + `NIGHTSHIFT_DBT_IN_PROCESS=1` (dbt through dbtRunner inside the task's
              process: no second interpreter; DBT_TIMEOUT_S does not apply then).

dbt's share is split from its debug log: pre_dbt_s (step start to dbt's first line: the
step's imports, the dbt process's start and imports) and parse_s (dbt's first line to its
first node: adapter, partial or full parse, connection). Then, in this process, the ETL
output's GX gate: its checkpoint run and the Data Docs publish.

Prints per night and variant `BENCH night_fixed variant=… night=… task_s=… critical_s=…
<step>_s=…`, then `BENCH night_fixed ratio variant=… …` (variant / baseline, last night)
and `BENCH night_fixed gx_docs …`. task_s is the sum of the steps' seconds; critical_s
counts the two extracts as the longer of them where they run together (what a real
executor's wall clock shows of them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

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
    "check_alerts",
    "apply_retention",
)
EXTRACTS = ("extract_source_db", "extract_payments_api")

# One step of the night in its own interpreter, as an executor runs a task; the step's
# return value comes back as JSON on the last stdout line.
_STEP = r"""
import json, os, sys, logging
from datetime import date
logging.basicConfig(level=logging.WARNING)
# what a task process has imported before its step starts: Airflow's task runner and the
# DAG file's modules (not timed by the step in a real executor either)
import airflow.sdk, pendulum, alerting.callbacks, core.settings
import resource
from pipeline import nightly
def cpu():
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
cpu0 = cpu()
day = date.fromisoformat(sys.argv[1]); name = sys.argv[2]
if name == "dbt_build" and os.environ.get("BENCH_EAGER_GX") == "1":
    # before issue 16, quality/results.py (dbt_build's tests as the suite `dbt`) imported
    # Great Expectations with it: the baseline pays that import inside the timed step
    import functools
    from pipeline.run_metrics import timed
    inner = nightly.dbt_build.__wrapped__
    def eager(day, *a, **k):
        import great_expectations
        return inner(day, *a, **k)
    functools.update_wrapper(eager, inner)
    nightly.dbt_build = timed(eager)
if name == "publish":
    parts = json.loads(sys.stdin.read())
    stats = nightly.run_stats(day, nightly.NightSteps(*parts))
    nightly.publish(day, stats)
    out = stats
elif name == "build_report":
    out = nightly.build_report(day, json.loads(sys.stdin.read()))
else:
    out = getattr(nightly, name)(day)
print("\n" + json.dumps({"out": out, "cpu_s": cpu() - cpu0}, default=str))
"""


def _run_step(name: str, day: str, env: dict[str, str], stdin: str = "") -> tuple[object, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _STEP, day, name],
        input=stdin,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    CPU[name] = round(last["cpu_s"], 3)
    return last["out"], time.monotonic() - started


CPU: dict[str, float] = {}  # CPU seconds (user + system, dbt's process included) per step


def _step_seconds(data_dir: Path, day: str) -> dict[str, float]:
    out = {}
    for path in sorted((data_dir / "runs" / day / "steps").glob("*.json")):
        record = json.loads(path.read_text())
        out[record["task"]] = float(record["seconds"])
    return out


def _clock_s(text: str) -> float | None:
    """Seconds since midnight of a "HH:MM:SS.ffffff" log stamp."""
    try:
        h, m, sec = text[:15].split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return None


def _dbt_startup(target_dir: Path, step_started: str | None) -> dict[str, object]:
    """Where dbt_build's time went before dbt's first node, from the newest run in
    `target_dir/logs/dbt.log` (debug): `pre_dbt_s` from the step's start to dbt's first
    line (the step's imports, dbt's interpreter and imports), `parse_s` from there to the
    first node (adapter, manifest: parse or partial parse, connection), and whether dbt
    parsed in full."""
    log = target_dir / "logs" / "dbt.log"
    if not log.exists():
        return {}
    text = log.read_text(errors="replace")
    run = text[text.rfind("Running with dbt=") - 32 :]
    stamps = [(line, _clock_s(line)) for line in run.splitlines()]
    stamps = [(line, t) for line, t in stamps if t is not None]
    if not stamps:
        return {}
    first = stamps[0][1]
    node = next((t for line, t in stamps if "Began running node" in line), None)
    out: dict[str, object] = {
        "full_parse": "Partial parsing enabled" not in run,
        "parse_s": None if node is None else round(node - first, 3),
    }
    if step_started:
        started = datetime.fromisoformat(step_started)
        t0 = started.hour * 3600 + started.minute * 60 + started.second + started.microsecond / 1e6
        out["pre_dbt_s"] = round(first - t0, 3)
    return out


def run_night(variant: str, data_dir: Path, day: str, base_env: dict[str, str]) -> dict:
    env = {**base_env, "NIGHTSHIFT_DATA_DIR": str(data_dir)}
    env["DBT_TARGET_PATH"] = str(data_dir / "dbt_target")
    env["DBT_LOG_LEVEL_FILE"] = "debug"
    if variant == "baseline":
        env["DBT_PARTIAL_PARSE"] = "false"
        env["BENCH_EAGER_GX"] = "1"
    if variant == "new_inproc":
        env["NIGHTSHIFT_DBT_IN_PROCESS"] = "1"
    shutil.rmtree(data_dir / "runs" / day, ignore_errors=True)
    results: dict[str, object] = {}
    walls: dict[str, float] = {}
    if variant == "baseline":  # the DAG before: source extract and load, then the API's
        order = ["extract_source_db", "load_source_db", "extract_payments_api"]
        for name in order:
            results[name], walls[name] = _run_step(name, day, env)
    else:  # both extracts at once, then the loads in the warehouse_writer pool
        with ThreadPoolExecutor(2) as pool:
            futures = {n: pool.submit(_run_step, n, day, env) for n in EXTRACTS}
            for name, future in futures.items():
                results[name], walls[name] = future.result()
        results["load_source_db"], walls["load_source_db"] = _run_step("load_source_db", day, env)
    for name in ("load_payments_api", "dbt_build", "transform_daily_sales", "check_parity"):
        results[name], walls[name] = _run_step(name, day, env)
    parts = [
        results[n]
        for n in (
            "extract_source_db",
            "load_source_db",
            "extract_payments_api",
            "load_payments_api",
            "transform_daily_sales",
            "check_parity",
        )
    ]
    stats, walls["publish"] = _run_step("publish", day, env, json.dumps(parts))
    _, walls["build_report"] = _run_step("build_report", day, env, json.dumps(stats))
    for name in ("check_alerts", "apply_retention"):
        _, walls[name] = _run_step(name, day, env)
    steps = _step_seconds(data_dir, day)
    cpu_s = dict(CPU)
    dbt_step = json.loads((data_dir / "runs" / day / "steps" / "dbt_build.json").read_text())
    startup = _dbt_startup(data_dir / "dbt_target", dbt_step.get("started_at"))
    task_s = sum(steps.values())
    critical = task_s
    if variant != "baseline":
        critical -= min(steps[n] for n in EXTRACTS)
    return {
        "steps": steps,
        "walls": walls,
        "task_s": round(task_s, 3),
        "critical_s": round(critical, 3),
        "dbt": startup,
        "cpu_s": round(sum(cpu_s.values()), 3),
        "cpu": cpu_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--orders-per-day", type=int, default=1000)
    parser.add_argument("--nights", type=int, default=2)
    parser.add_argument("--variants", default="baseline,new,new_inproc")
    parser.add_argument("--bench-dir", type=Path, default=ROOT / "data" / "bench" / "night_fixed")
    args = parser.parse_args(argv)

    from core import clock, settings
    from demo.generator import generate
    from demo.run import running_api

    bench_dir = args.bench_dir.resolve()
    src = bench_dir / f"source-{args.days}d-{args.orders_per_day}"
    src.mkdir(parents=True, exist_ok=True)
    source, payments = src / "source.db", src / "payments.db"
    day = (clock.now().astimezone(settings.report_tz()).date() - timedelta(days=1)).isoformat()
    stamp = src / "end_date"
    if not (source.exists() and payments.exists() and stamp.exists()) or stamp.read_text() != day:
        for p in (source, payments):
            p.unlink(missing_ok=True)
        t = time.monotonic()
        generate(
            f"sqlite:///{source}",
            seed=42,
            days=args.days,
            end_date=date.fromisoformat(day),
            orders_per_day=args.orders_per_day,
            payments_db=payments,
            if_exists="replace",
        )
        stamp.write_text(day)
        print(f"generated the demo source in {time.monotonic() - t:.1f} s: {src}", flush=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    for key in ("WAREHOUSE_PATH", "DBT_PARTIAL_PARSE", "NIGHTSHIFT_DBT_IN_PROCESS"):
        base_env.pop(key, None)
    base_env["PYTHONPATH"] = str(ROOT)
    base_env["AIRFLOW_CONN_SOURCE_DB"] = f"sqlite:///{source}"
    variants = args.variants.split(",")
    last: dict[str, dict] = {}
    with running_api(payments) as api_uri:
        base_env["AIRFLOW_CONN_PAYMENTS_API"] = api_uri
        for variant in variants:
            shutil.rmtree(bench_dir / f"run-{variant}", ignore_errors=True)
            (bench_dir / f"run-{variant}").mkdir(parents=True)
        for night in range(1, args.nights + 1):
            for variant in variants:
                r = run_night(variant, bench_dir / f"run-{variant}", day, base_env)
                last[variant] = r
                per_step = " ".join(f"{n}_s={r['steps'].get(n, 0):.2f}" for n in STEPS)
                dbt = " ".join(f"dbt_{k}={v}" for k, v in r["dbt"].items())
                print(
                    f"BENCH night_fixed variant={variant} night={night} "
                    f"task_s={r['task_s']:.2f} critical_s={r['critical_s']:.2f} "
                    f"cpu_s={r['cpu_s']:.2f} dbt_build_cpu_s={r['cpu'].get('dbt_build')} "
                    f"{dbt} {per_step}",
                    flush=True,
                )
    if "baseline" in last:
        b = last["baseline"]
        for variant in variants:
            if variant == "baseline":
                continue
            n = last[variant]
            per = " ".join(
                f"{s}={n['steps'][s] / b['steps'][s]:.2f}"
                for s in STEPS
                if b["steps"].get(s) and s in n["steps"]
            )
            print(
                f"BENCH night_fixed ratio variant={variant} "
                f"task_s={n['task_s'] / b['task_s']:.2f} "
                f"critical_s={n['critical_s'] / b['critical_s']:.2f} "
                f"cpu_s={n['cpu_s'] / b['cpu_s']:.2f} {per}",
                flush=True,
            )
    gx_docs(bench_dir)
    return 0


def gx_docs(bench_dir: Path, builds: int = 5) -> None:
    """The ETL output's gate in this process: its checkpoint run (validation, stored
    result, Data Docs update) and the site's publish, 5 times on the process's one GX
    context (the first, which opens the project, timed apart)."""
    from quality.results import build_data_docs
    from quality.validate import validate_frame

    frame = pd_frame()
    out = bench_dir / "gx_docs"
    timings = []
    for i in range(builds + 1):
        started = time.perf_counter()
        results = [validate_frame(frame, "analytics.daily_sales", run_id=f"bench-{i}")]
        validated = time.perf_counter()
        build_data_docs(results, out / f"gate-{i}")
        timings.append((validated - started, time.perf_counter() - validated))
    shutil.rmtree(out, ignore_errors=True)
    steady = timings[1:]
    print(
        f"BENCH night_fixed gx_docs first_gate_s={sum(timings[0]):.3f} "
        f"checkpoint_s={sum(t[0] for t in steady) / builds:.3f} "
        f"publish_s={sum(t[1] for t in steady) / builds:.3f}",
        flush=True,
    )


def pd_frame():
    """A small daily_sales frame (transform.daily_sales's shape) for the GX docs timing."""
    from decimal import Decimal

    import pandas as pd

    return pd.DataFrame(
        {
            "date": [date(2026, 12, 1), date(2026, 12, 1), date(2026, 12, 2)],
            "region": ["eu", "unknown", "eu"],
            "category": ["toys", "uncategorized", "toys"],
            "total_sales_usd": [Decimal("10.87"), Decimal("0.00"), Decimal("5.00")],
            "order_count": pd.Series([2, 1, 1], dtype="int64"),
        }
    )


if __name__ == "__main__":
    raise SystemExit(main())
