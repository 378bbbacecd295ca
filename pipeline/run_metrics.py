"""Run metrics: per step timings and counts, stored with the data they describe.

Each nightly step records its duration and outcome in a small JSON file under
`data/runs/<run_id>/steps/`, or `<NIGHTSHIFT_DATA_URL>/runs/…` (steps may run in
different processes and hosts; the records are written and read by core/run_steps.py,
which the alert rules of a failed run read too). The publish step
gathers them with the run's statistics into `ops.pipeline_runs` / `ops.task_metrics`
inside the build, so the metrics are published atomically with the tables (and a run
that fails publishes none, its step files stay for the on-call). The same metrics feed
the alert rules and, when `STATSD_HOST` is set, StatsD gauges (Airflow's own format).

`collect` and `store` run in the caller's transaction on any warehouse backend (a
`Session`, or a bare DuckDB connection); `history` reads the published warehouse (a
DuckDB file path or a `Warehouse`).
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from core import clock, ops, run_steps
from core.run_steps import read_steps, replica_lag

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

TABLES = ("pipeline_runs", "task_metrics")


def timed(step: F) -> F:
    """Record a step's duration and outcome (success or the error's first line)."""

    @functools.wraps(step)
    def wrapper(business_date: date, *args: Any, **kwargs: Any) -> Any:
        started = time.time()
        outcome: dict[str, Any] = {"status": "failed"}
        try:
            result = step(business_date, *args, **kwargs)
            outcome = {"status": "success", "summary": result}
            return result
        except BaseException as exc:
            first = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
            outcome = {"status": "failed", "error": first}
            raise
        finally:
            run_steps.record(
                business_date.isoformat(), step.__name__, started, time.time(), outcome
            )

    return wrapper  # type: ignore[return-value]


def collect(con: Any, business_date: date, stats: dict[str, Any]) -> dict[str, Any]:
    """The run's metrics (the shape `alerting.rules.evaluate` reads), from the build
    (`con`: a warehouse Session on it, or a DuckDB connection)."""
    from warehouse.backends.duckdb import as_session

    session = as_session(con)
    run_id = business_date.isoformat()
    steps = read_steps(run_id)
    started = min((s["started_at"] for s in steps), default=None)
    duration = None
    if started:
        duration = (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
    freshness = None
    if session.exists("raw", "orders"):
        newest = session.fetchone("select max(updated_at) from {raw}.orders")[0]
        if newest is not None:
            freshness = (clock.now() - newest.astimezone(UTC)).total_seconds()
    checks = passed = critical = warnings = 0
    if session.exists("ops", "quality_results"):
        checks, passed, critical, warnings = session.fetchone(
            "select count(*), count(*) filter (where success), "
            "count(*) filter (where not success and severity = 'critical'), "
            "count(*) filter (where not success and severity <> 'critical') "
            "from {ops}.quality_results where run_id = ?",
            [run_id],
        )
    return {
        "run_id": run_id,
        "dag_id": "nightly_sales",
        "business_date": run_id,
        "started_at": started,
        "duration_s": duration,
        "freshness_lag_s": freshness,
        "rows_extracted": stats.get("extracted", {}),
        "quarantined": stats.get("quarantined", {}),
        "rows_loaded": stats.get("loaded", {}),
        "rows_published": stats.get("published", {}),
        "restated_days": stats.get("restated_days", 0),
        "horizon": stats.get("horizon"),  # the last day this run published
        "recomputed_days": stats.get("recomputed_days", []),  # daily_sales days recomputed
        "quality": {
            "checks": int(checks),
            "pass_rate": (passed / checks) if checks else None,
            "critical_failures": int(critical),
            "warnings": int(warnings),
        },
        "replica_lag_s": replica_lag(run_id),
        "steps": steps,
        "source_freshness": source_freshness(session, run_id),
    }


def source_freshness(session: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's `dbt source freshness` per source table (`raw.orders`: status, age in
    hours), from its `source_freshness` suite in `ops.quality_results` (quality/freshness.py)."""
    if not session.exists("ops", "quality_results"):
        return {}
    columns = session.table_columns(session.table("ops", "quality_results"))
    if "suite" not in columns or "details" not in columns:  # a hand-made or older table
        return {}
    rows = session.fetchall(
        "select details from {ops}.quality_results where run_id = ? and suite = ?",
        [run_id, "source_freshness"],
    )
    out: dict[str, dict[str, Any]] = {}
    for (details,) in rows:
        info = json.loads(details) if isinstance(details, str) else dict(details or {})
        age = info.get("age_s")
        out[str(info.get("table"))] = {
            "status": info.get("status"),
            "age_h": None if age is None else round(float(age) / 3600, 2),
            "accepted": bool(info.get("accepted")),
        }
    return out


def store(con: Any, metrics: dict[str, Any]) -> None:
    """Write the run into `ops.pipeline_runs` / `ops.task_metrics` (replacing a rerun), in
    the caller's transaction (`con`: a warehouse Session on the build, or a DuckDB
    connection)."""
    from warehouse.backends.duckdb import as_session

    s = as_session(con)
    ops.create(s, *TABLES)
    run_id = metrics["run_id"]
    s.execute("delete from {ops}.pipeline_runs where run_id = ?", [run_id])
    s.execute("delete from {ops}.task_metrics where run_id = ?", [run_id])
    s.execute(
        "insert into {ops}.pipeline_runs (run_id, business_date, started_at, published_at, "
        "duration_s, freshness_lag_s, quality_checks, quality_pass_rate, restated_days, "
        "rows_extracted, rows_quarantined, rows_loaded, rows_published, metrics) "
        "values (?, cast(? as date), cast(? as timestamptz), now(), ?, ?, ?, ?, ?, "
        "?, ?, ?, ?, ?)",
        [
            run_id,
            metrics["business_date"],
            metrics["started_at"],
            metrics["duration_s"],
            metrics["freshness_lag_s"],
            metrics["quality"]["checks"],
            metrics["quality"]["pass_rate"],
            metrics["restated_days"],
            json.dumps(metrics["rows_extracted"], default=str),
            json.dumps(metrics["quarantined"], default=str),
            json.dumps(metrics["rows_loaded"], default=str),
            json.dumps(metrics["rows_published"], default=str),
            json.dumps({k: v for k, v in metrics.items() if k != "steps"}, default=str),
        ],
    )
    for step in metrics["steps"]:
        s.execute(
            "insert into {ops}.task_metrics (run_id, task, status, started_at, finished_at, "
            "seconds, summary) values (?, ?, ?, cast(? as timestamptz), "
            "cast(? as timestamptz), ?, ?)",
            [
                run_id,
                step["task"],
                step["status"],
                step.get("started_at"),
                step.get("finished_at"),
                step.get("seconds"),
                json.dumps(step.get("summary", step.get("error")), default=str),
            ],
        )


def history(where: Any, run_id: str, limit: int = 30) -> list[dict[str, Any]]:
    """Earlier runs' metrics, oldest first (`core.run_steps.history`), from the published
    `ops.pipeline_runs` of `where` (a DuckDB file path or a `Warehouse`)."""
    from warehouse.backends import as_warehouse

    return run_steps.history(as_warehouse(where), run_id, limit)


def emit_statsd(metrics: dict[str, Any], host: str | None, port: int = 8125) -> int:
    """Gauges in StatsD's line format (as Airflow emits), over UDP; returns lines sent."""
    if not host:
        return 0
    lines = []
    for group in ("rows_extracted", "quarantined", "rows_published"):
        for table, value in (metrics.get(group) or {}).items():
            if isinstance(value, int | float):
                lines.append(f"nightshift.{group}.{table}:{value}|g")
    for key in ("duration_s", "freshness_lag_s", "restated_days"):
        if isinstance(metrics.get(key), int | float):
            lines.append(f"nightshift.{key}:{metrics[key]}|g")
    rate = (metrics.get("quality") or {}).get("pass_rate")
    if isinstance(rate, int | float):
        lines.append(f"nightshift.quality.pass_rate:{rate}|g")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for line in lines:
            sock.sendto(line.encode(), (host, port))
    return len(lines)
