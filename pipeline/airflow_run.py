"""Run `nightly_sales` for one business day through Airflow (`airflow dags test`).

    python -m pipeline.airflow_run --date 2026-11-27

Used by `make nightly` and `make demo`. Connections come from the environment
(`AIRFLOW_CONN_SOURCE_DB`, `AIRFLOW_CONN_PAYMENTS_API`, ...). A caller may pass
`fallback_connections` for when neither is set: `nightshift nightly` (demo/run.py)
passes the demo's source and API, so `make nightly` works right after `make demo`.

`airflow dags test` ignores pools and `max_active_runs`, so the command itself holds the
warehouse's lease (warehouse/lease.py) for the whole run (the local backfill: for every
day of it); another run waits `WAREHOUSE_LEASE_WAIT_S`, then fails naming this one. A
scheduler backfill (`airflow backfill create`) is made of ordinary dag runs, each
holding its own lease from its first task to its teardown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path

from core import run_files, settings
from core.files import write_atomic
from pipeline.task_run import HOLDER_ENV, RUN_ENV
from warehouse import lease

#: Connections for a run that has none configured: given the data dir, a context that
#: yields the `AIRFLOW_CONN_*` variables to use (and holds whatever serves them).
FallbackConnections = Callable[[Path], AbstractContextManager[dict[str, str]]]

DAG_ID = "nightly_sales"


def airflow_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the Airflow CLI: project AIRFLOW_HOME, SQLite metadata, no examples."""
    env = dict(os.environ)
    root = settings.PROJECT_ROOT
    env.setdefault("AIRFLOW_HOME", str(root / ".airflow"))
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(root / "dags"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__USAGE_DATA_COLLECTION__ENABLED", "False")
    env.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    # `airflow standalone` starts its components as `airflow …` found on PATH.
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    if extra:
        env.update(extra)
        if "PYTHONPATH" in extra:  # added to, never instead of, the project root
            parts = [p for p in extra["PYTHONPATH"].split(os.pathsep) if p and p != str(root)]
            env["PYTHONPATH"] = os.pathsep.join([str(root), *parts])
    return env


def airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def ensure_airflow_initialised(env: dict[str, str]) -> None:
    """`airflow db migrate` and the warehouse pool, once per AIRFLOW_HOME."""
    home = Path(env["AIRFLOW_HOME"])
    stamp = home / ".initialized"
    if stamp.exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([airflow_bin(), "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(
        [airflow_bin(), "pools", "set", "warehouse_writer", "1", "one writer of the warehouse"],
        env=env,
        check=True,
        capture_output=True,
    )
    stamp.touch()


def logical_date_for(business_date: date) -> datetime:
    """The scheduled run that covers `business_date`: 02:00 of the next day in REPORT_TZ."""
    return datetime.combine(
        business_date + timedelta(days=1), time_of_day(2, 0), settings.report_tz()
    )


def run_dag(
    business_date: date,
    env: dict[str, str] | None = None,
    *,
    full_refresh: bool = False,
    allow_mass_delete: bool = False,
) -> None:
    """`airflow dags test nightly_sales` for one business day; raises on a failed run.

    `full_refresh`, `allow_mass_delete`: the DAG params of the same names."""
    env = airflow_env(env)
    ensure_airflow_initialised(env)
    with warehouse_lease(env, f"nightly {business_date} (airflow dags test)") as env:
        _dags_test(business_date, env, full_refresh, allow_mass_delete)


def _dags_test(
    business_date: date, env: dict[str, str], full_refresh: bool, allow_mass_delete: bool
) -> None:
    conf = json.dumps(
        {
            "business_date": business_date.isoformat(),
            "full_refresh": full_refresh,
            "allow_mass_delete": allow_mass_delete,
        }
    )
    cmd = [
        airflow_bin(),
        "dags",
        "test",
        DAG_ID,
        logical_date_for(business_date).isoformat(),
        "--conf",
        conf,
    ]
    # `dags test` exits non-zero when the run ends in any state but success.
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"nightly_sales for {business_date} failed (exit {proc.returncode})")


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """`os.environ` as the run will see it, for reading its settings here."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def warehouse_lease(env: dict[str, str], run: str) -> Iterator[dict[str, str]]:
    """The warehouse's lease (warehouse/lease.py) for the whole of a command that runs
    the DAG through `airflow dags test`, which ignores pools and `max_active_runs`: a
    second command (or the scheduled run) waits `WAREHOUSE_LEASE_WAIT_S`, then fails
    naming this one. Yields `env` with the holder named for the run's tasks; a holder
    already named there (a backfill's day) is joined, not taken again."""
    if env.get(HOLDER_ENV):
        yield env
        return
    with _environ(env):
        warehouse = settings.warehouse_lease_target()
        ttl_s = settings.warehouse_lease_ttl_seconds()
        wait_s = settings.warehouse_lease_wait_seconds()
    holder = lease.new_holder("dags-test")
    described = f"{run}, pid {os.getpid()}"
    try:
        with lease.held(warehouse, holder, described, ttl_s=ttl_s, wait_s=wait_s):
            yield {**env, HOLDER_ENV: holder, RUN_ENV: described}
    except lease.WarehouseBusyError as exc:
        raise SystemExit(f"{run}: not started: {exc}") from exc


@contextlib.contextmanager
def configured_connections(
    data_dir: Path, fallback: FallbackConnections | None = None
) -> Iterator[dict[str, str]]:
    """Nothing to add when a source connection is configured; else `fallback`'s
    connections (for the duration), or an error naming what to set."""
    if settings.env("AIRFLOW_CONN_SOURCE_DB") or settings.env("AIRFLOW_CONN_PAYMENTS_API"):
        yield {}
        return
    if fallback is None:
        raise SystemExit(
            "no connection configured (AIRFLOW_CONN_SOURCE_DB, AIRFLOW_CONN_PAYMENTS_API): "
            "set them (see .env.example), or run `nightshift nightly`, which uses the "
            "demo's sources after `make demo`"
        )
    with fallback(data_dir) as extra:
        yield extra


UI_USER = "admin"
WEAK_UI_PASSWORDS = frozenset({"", "admin", "airflow", "change-me"})


def write_ui_passwords(path: Path, password: str | None = None) -> None:
    """The simple auth manager's passwords file for UI_USER, readable by its owner only.

    A given password (AIRFLOW_ADMIN_PASSWORD) is used unless it is a well-known one;
    without one, the file's password is kept unless well-known (an older `make airflow`
    wrote admin/admin), else a random one is made. The password is never printed.
    """
    if password is not None and password in WEAK_UI_PASSWORDS:
        raise SystemExit(
            "AIRFLOW_ADMIN_PASSWORD is a well-known default: choose another, or unset it "
            f"for a random one written to {path}"
        )
    current: dict = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        loaded = json.loads(path.read_text())
        current = loaded if isinstance(loaded, dict) else {}
    kept = current.get(UI_USER)
    if password is None and isinstance(kept, str) and kept not in WEAK_UI_PASSWORDS:
        os.chmod(path, 0o600)
        return
    current[UI_USER] = password or secrets.token_urlsafe(18)
    write_atomic(path, json.dumps(current), mode=0o600)  # owner only from the first byte


def serve_ui(env_extra: dict[str, str]) -> int:
    """`airflow standalone` (UI on 127.0.0.1:8080) with the project's settings.

    Loopback only unless AIRFLOW__API__HOST says otherwise (Airflow's own default is
    0.0.0.0); the admin's password is AIRFLOW_ADMIN_PASSWORD or a random one, in
    $AIRFLOW_HOME/passwords.json readable by its owner only.
    """
    env = airflow_env(env_extra)
    ensure_airflow_initialised(env)
    passwords = Path(env["AIRFLOW_HOME"]) / "passwords.json"
    write_ui_passwords(passwords, env.get("AIRFLOW_ADMIN_PASSWORD"))
    env.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", f"{UI_USER}:admin")
    env.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
    env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
    env.setdefault("AIRFLOW__API__PORT", "8080")
    print(
        f"Airflow UI: http://{env['AIRFLOW__API__HOST']}:{env['AIRFLOW__API__PORT']}  "
        f"(login {UI_USER}; the password is in {passwords}, readable by you only)"
    )
    return subprocess.run([airflow_bin(), "standalone"], env=env).returncode


def _business_days(first: date, last: date) -> list[date]:
    if last < first:
        raise SystemExit(f"backfill: FROM {first} is after TO {last}")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _summary(first: date, last: date, results: list[tuple[date, str, float]], total: int) -> int:
    ok = sum(1 for _, outcome, _ in results if outcome == "success")
    print(f"backfill {first}..{last}: {ok}/{total} days succeeded")
    for day, outcome, seconds in results:
        print(f"  {day}  {outcome:<10} {seconds:6.0f}s")
    return 0 if ok == total else 1


def backfill(first: date, last: date, env_extra: dict[str, str]) -> int:
    """Run nightly_sales for every business day from `first` to `last`, in order.

    Each day is a normal `dags test` run (idempotent: a rerun replaces that day), so
    backfilling a range twice leaves the same tables. Prints progress and a summary.
    The warehouse's lease is held from the first day to the last: no other run slips
    in between two days.
    No scheduler needed; `backfill_with_scheduler` is the deployed form.
    """
    days = _business_days(first, last)
    results: list[tuple[date, str, float]] = []
    # one lease for every day: no other run slips in between two days
    with warehouse_lease(airflow_env(env_extra), f"backfill {first}..{last}") as env:
        for index, day in enumerate(days, 1):
            started = time.monotonic()
            try:
                run_dag(day, env)
                outcome = "success"
            except SystemExit as exc:
                outcome = f"failed ({exc})"
            seconds = time.monotonic() - started
            results.append((day, outcome, seconds))
            done = sum(r[2] for r in results)
            eta = done / index * (len(days) - index)
            print(
                f"[backfill {index}/{len(days)}] {day}: {outcome} in {seconds:.0f}s (ETA {eta:.0f}s)"
            )
            if outcome != "success":
                break
    return _summary(first, last, results, len(days))


def scheduler_running(env: dict[str, str]) -> bool:
    """`airflow jobs check --job-type SchedulerJob`: a live scheduler on this metadata DB."""
    proc = subprocess.run(
        [airflow_bin(), "jobs", "check", "--job-type", "SchedulerJob"],
        env=env,
        capture_output=True,
    )
    return proc.returncode == 0


def _backfill_runs(env: dict[str, str], first_run: datetime, last_run: datetime) -> list[dict]:
    """The backfill runs of nightly_sales between two logical dates (`dags list-runs`)."""
    out = subprocess.run(
        [airflow_bin(), "dags", "list-runs", DAG_ID, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Log lines may come before the JSON array (one line); take the line that is it.
    lines = [line for line in out.splitlines() if line.startswith("[{") or line.strip() == "[]"]
    runs = json.loads(lines[-1]) if lines else []
    mine = []
    for run in runs:
        if not str(run.get("run_id", "")).startswith("backfill__"):
            continue
        logical = datetime.fromisoformat(str(run["logical_date"]))
        if first_run <= logical <= last_run:
            mine.append(run)
    return mine


def _create_backfill(
    cmd: list[str], env: dict[str, str], *, wait_s: float = 600, poll_s: float = 5
) -> None:
    """Run `airflow backfill create`, waiting while another backfill of the DAG runs.

    Airflow allows one running backfill per DAG, and the scheduler marks a backfill
    completed a loop after its last run succeeded: a second `make backfill` started right
    after the first one returned met `AlreadyRunningBackfill` (seen in CI on an idle
    machine). So that error is retried for up to `wait_s`; then it fails saying why.
    """
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode == 0:
            return
        busy = "AlreadyRunningBackfill" in proc.stderr
        if busy and time.monotonic() < deadline:
            if not waiting:
                print(
                    f"[backfill] another backfill of {DAG_ID} is still running: waiting", flush=True
                )
                waiting = True
            time.sleep(poll_s)
            continue
        sys.stderr.write(proc.stderr)
        if busy:
            print(
                f"[backfill] another backfill of {DAG_ID} is still running after {wait_s:.0f}s "
                "(Airflow runs one per DAG): let it finish or cancel it in the UI, then retry",
                flush=True,
            )
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)


def backfill_with_scheduler(
    first: date,
    last: date,
    env_extra: dict[str, str],
    *,
    poll_s: float = 10,
    timeout_s: float = 24 * 3600,
) -> int:
    """`airflow backfill create` for business days `first`..`last`, run by the scheduler.

    One run at a time (`--max-active-runs 1`: each night builds on the previous
    one's warehouse) and `--reprocess-behavior completed`, so backfilling a range
    twice re-runs it and leaves the same tables. Polls the runs and prints progress
    (done/total, failed, ETA) and a summary.
    """
    env = airflow_env(env_extra)
    days = _business_days(first, last)
    first_run, last_run = logical_date_for(first), logical_date_for(last)
    _create_backfill(
        [
            airflow_bin(),
            "backfill",
            "create",
            "--dag-id",
            DAG_ID,
            "--from-date",
            first_run.isoformat(),
            "--to-date",
            last_run.isoformat(),
            "--max-active-runs",
            "1",
            "--reprocess-behavior",
            "completed",
        ],
        env,
    )
    started = time.monotonic()
    shown = None
    while time.monotonic() - started < timeout_s:
        runs = _backfill_runs(env, first_run, last_run)
        states = [run["state"] for run in runs]
        done = sum(1 for s in states if s == "success")
        failed = sum(1 for s in states if s == "failed")
        finished = done + failed
        elapsed = time.monotonic() - started
        eta = elapsed / finished * (len(days) - finished) if finished else float("nan")
        line = f"[backfill] {done}/{len(days)} nights succeeded, {failed} failed, ETA {eta:.0f}s"
        if line != shown:
            print(line, flush=True)
            shown = line
        if len(runs) >= len(days) and finished == len(runs):
            break
        time.sleep(poll_s)
    else:
        print(f"[backfill] timed out after {timeout_s:.0f}s")
    runs = _backfill_runs(env, first_run, last_run)
    results = []
    for run in sorted(runs, key=lambda r: str(r["logical_date"])):
        logical = datetime.fromisoformat(str(run["logical_date"]))
        day = logical.astimezone(settings.report_tz()).date() - timedelta(days=1)
        seconds = 0.0
        if run.get("start_date") and run.get("end_date"):
            seconds = (
                datetime.fromisoformat(str(run["end_date"]))
                - datetime.fromisoformat(str(run["start_date"]))
            ).total_seconds()
        results.append((day, str(run["state"]), seconds))
    return _summary(first, last, results, len(days))


def main(
    argv: list[str] | None = None,
    prog: str | None = None,
    *,
    fallback_connections: FallbackConnections | None = None,
) -> int:
    """`nightly`, `backfill` or `ui`; `fallback_connections`: the connections of a run
    that has none configured (`configured_connections`)."""
    args = _parser(prog).parse_args(argv)
    with configured_connections(settings.data_dir(), fallback_connections) as extra:
        if args.command == "ui":
            return serve_ui(extra)
        if args.command == "backfill":
            mode = args.mode
            if mode == "auto":
                mode = "scheduler" if scheduler_running(airflow_env(extra)) else "local"
            if mode == "scheduler":
                return backfill_with_scheduler(args.first, args.last, extra)
            return backfill(args.first, args.last, extra)
        run_dag(args.date, extra, full_refresh=args.full, allow_mass_delete=args.allow_mass_delete)
    print(f"nightly_sales {args.date}: success")
    print(f"report:    {run_files.report_location(args.date)}")
    print(f"warehouse: {published_warehouse()}")
    return 0


def published_warehouse() -> str:
    """Where the run published: the warehouse server (its password masked), or the
    DuckDB file."""
    if settings.warehouse_url() is not None:
        return settings.warehouse().describe()
    return str(settings.warehouse_path())


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="nightly_sales through Airflow")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "nightly",
        aliases=["run"],
        help="run nightly_sales for one business day (dags test)",
        description="Run nightly_sales for one business day through Airflow (`airflow dags "
        "test`), against whatever the connections point to (the demo sources when none is set).",
    )
    run.add_argument(
        "--date", required=True, type=date.fromisoformat, metavar="YYYY-MM-DD", help="business day"
    )
    run.add_argument(
        "--full", action="store_true", help="full rebuild: read the source in full, rebuild all"
    )
    run.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="let this run delete more of a table than config/guards.yml allows",
    )
    sub.add_parser(
        "ui",
        help="the Airflow UI (standalone) with the demo connections",
        description="The Airflow UI on http://127.0.0.1:8080 (airflow standalone, the demo "
        "sources when no connection is set); login admin, password AIRFLOW_ADMIN_PASSWORD or "
        "the random one in $AIRFLOW_HOME/passwords.json.",
    )
    fill = sub.add_parser(
        "backfill",
        help="run nightly_sales for each day of a range",
        description="Run nightly_sales for each day of a range, in order; idempotent, never "
        "removes a later published day.",
    )
    fill.add_argument(
        "--from",
        dest="first",
        required=True,
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="first day",
    )
    fill.add_argument(
        "--to",
        dest="last",
        required=True,
        type=date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="last day (inclusive)",
    )
    fill.add_argument(
        "--mode",
        choices=("auto", "scheduler", "local"),
        default="auto",
        help="scheduler: `airflow backfill create` run by a live scheduler; local: one "
        "`dags test` per day; auto (default): scheduler when one is running",
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
