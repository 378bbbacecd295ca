"""The alerts of one nightly run, wherever the run ends, each with a link to the run.

Three places evaluate the rules of `config/alerts.yml` (`alerting.rules`) and send what
fires through the same sinks (`alerting.sinks.send_all`):

- a published run: the `check_alerts` task (`alert_run` on the metrics in
  `ops.pipeline_runs`);
- a failed run, which never publishes: the DAG's `on_failure_callback`
  (`alerting.callbacks.on_dag_failure` → `failed_run_alerts`), on metrics gathered from
  what the run left: its step files (`data/runs/<run_id>/steps/`), its landed manifests,
  and the failed gate's results in the *published* `ops.quality_results`
  (`quality.results.record_failed_gate`) plus a parity failure;
- the extract falling back from `source_db_replica` to the primary
  (`extract.replica.choose_read_url` → `replica_fallback`), at once.

`for_runs` streaks: each evaluation records the condition keys it found met, per rule it
could evaluate (its input present), in the run's folder (`data/runs/<run_id>/alerts.json`,
beside the step files, or on the store: core/run_files.py; pruned with them). A rule with `for_runs: N` reads the
last N-1 earlier runs (by run id: the business day) that evaluated it and fires when each
of them met it too; a run that could not evaluate the rule (it failed before its input
existed) neither extends nor breaks the streak.

Links: `run_url(dag_id, run_id)` is `<base>/dags/<dag_id>/runs/<run_id>` (the Airflow 3
UI; ids percent-encoded), `<base>` from `AIRFLOW__API__BASE_URL` (Airflow's own
`[api] base_url`), else `http://localhost:8080`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from alerting.rules import (
    RULES,
    Thresholds,
    apply_for_runs,
    condition_key,
    conditions,
    evaluable,
)
from alerting.sinks import Alert, AlertSink, send_all
from core import settings

log = logging.getLogger(__name__)

NIGHTLY_DAG_ID = "nightly_sales"
DEFAULT_BASE_URL = "http://localhost:8080"
ALERTS_FILE = "alerts.json"
#: evaluated at the end of a run (published or failed); replica_fallback is raised by the
#: extract when it happens
RUN_END_RULES = frozenset(RULES) - {"replica_fallback"}


# --- links ---------------------------------------------------------------------------


def airflow_base_url() -> str:
    """The Airflow UI's base URL: `AIRFLOW__API__BASE_URL`, else Airflow's `[api] base_url`
    when Airflow is loaded, else `http://localhost:8080` (`make airflow`)."""
    value = settings.env("AIRFLOW__API__BASE_URL", "")
    if not value and "airflow.configuration" in sys.modules:
        try:
            from airflow.configuration import conf

            value = (conf.get("api", "base_url", fallback="") or "").strip()
        except Exception:
            value = ""
    return (value or DEFAULT_BASE_URL).rstrip("/")


def run_url(dag_id: str | None, run_id: str | None, base_url: str | None = None) -> str | None:
    """The run's page in the Airflow UI; None without a dag or run id."""
    if not dag_id or not run_id:
        return None
    base = (base_url or airflow_base_url()).rstrip("/")
    return f"{base}/dags/{quote(str(dag_id), safe='')}/runs/{quote(str(run_id), safe='')}"


@dataclass(frozen=True)
class AirflowRun:
    """The Airflow run alerts link to: its DAG id (None: the alert's own) and its Airflow
    run id (None: no link)."""

    dag_id: str | None = None
    run_id: str | None = None


NO_AIRFLOW_RUN = AirflowRun()


def with_link(alert: Alert, airflow: AirflowRun) -> Alert:
    url = run_url(airflow.dag_id or alert.dag_id, airflow.run_id)
    if not url:
        return alert
    return replace(alert, url=url, fields={**alert.fields, "airflow_run": airflow.run_id})


# --- streak state in the run files --------------------------------------------------


def record_conditions(run_id: str, evaluated: Iterable[str], met: Iterable[str]) -> None:
    """Record, for each rule `evaluated` in run `run_id`, the condition keys `met`
    (other rules' records of the run are kept). Never raises."""
    from core import run_files

    try:
        raw = run_files.read(run_id, ALERTS_FILE)
        data: dict[str, Any] = json.loads(raw) if raw else {}
        rules = data.setdefault("rules", {})
        met = list(met)
        for rule in evaluated:
            rules[rule] = sorted(k for k in met if k == rule or k.startswith(rule + ":"))
        data["run_id"] = run_id
        data["updated_at"] = datetime.now(UTC).isoformat()
        run_files.write(run_id, ALERTS_FILE, json.dumps(data, sort_keys=True).encode())
    except Exception:
        log.exception("alerts: could not record the conditions of run %s", run_id)


def earlier_conditions(run_id: str, limit: int | None = None) -> list[dict[str, set[str]]]:
    """Per run recorded before `run_id` (the last `limit`, oldest first): for each rule
    evaluated in it, the condition keys it met."""
    from core import run_files

    runs = [name for name in run_files.runs_with(ALERTS_FILE) if name < run_id]
    if limit is not None:
        runs = runs[-limit:] if limit > 0 else []
    out: list[dict[str, set[str]]] = []
    for name in runs:
        try:
            data = json.loads(run_files.read(name, ALERTS_FILE) or b"")
        except (OSError, ValueError):
            continue
        out.append({rule: set(keys) for rule, keys in (data.get("rules") or {}).items()})
    return out


def streaks(earlier: Sequence[Mapping[str, set[str]]]) -> dict[str, list[set[str]]]:
    """Per rule, the keys met by each earlier run that evaluated it, oldest first."""
    per_rule: dict[str, list[set[str]]] = {rule: [] for rule in RULES}
    for run in earlier:
        for rule, keys in run.items():
            per_rule.setdefault(rule, []).append(set(keys))
    return per_rule


# --- evaluation ------------------------------------------------------------------------


def load_configured_thresholds() -> Thresholds:
    from alerting.rules import load_thresholds
    from core import settings

    return load_thresholds(settings.alerts_config_path())


def alert_run(
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    *,
    rules: Collection[str] = RUN_END_RULES,
    thresholds: Thresholds | None = None,
    airflow: AirflowRun = NO_AIRFLOW_RUN,
    sinks: Sequence[AlertSink] | None = None,
) -> list[Alert]:
    """Evaluate `rules` on one run's metrics, record what was met (for `for_runs`), send
    the alerts that fire (each linked to the `airflow` run when its run id is known)."""
    thresholds = thresholds or load_configured_thresholds()
    met = [a for a in conditions(metrics, history, thresholds) if a.fields.get("rule") in rules]
    run_id = metrics.get("run_id")
    earlier: dict[str, list[set[str]]] = {}
    if run_id:
        earlier = streaks(earlier_conditions(str(run_id)))
        evaluated = set(rules) & evaluable(metrics)
        record_conditions(str(run_id), sorted(evaluated), [condition_key(a) for a in met])
    alerts = [with_link(a, airflow) for a in apply_for_runs(met, thresholds, earlier)]
    if alerts:
        send_all(alerts, sinks)
    return alerts


def current_airflow_run() -> tuple[str | None, str | None, Mapping[str, Any] | None]:
    """(dag_id, Airflow run_id, context) of the task this code runs in; Nones outside one."""
    if "airflow.sdk" not in sys.modules:
        return None, None, None
    try:
        from airflow.sdk import get_current_context

        ctx = get_current_context()
    except Exception:
        return None, None, None
    dag_run = _get(ctx, "dag_run")
    dag_id = _get(dag_run, "dag_id") or _get(_get(ctx, "dag"), "dag_id")
    run_id = _get(ctx, "run_id") or _get(dag_run, "run_id")
    return dag_id, run_id, ctx


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    try:
        return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    except Exception:
        return None


def business_date_of(context: Mapping[str, Any]) -> date | None:
    """The nightly's business day of a run from an Airflow context (as the DAG computes it:
    the `business_date` param / conf, else the day before the run's date)."""
    from core.business_day import business_date_for

    dag_run = _get(context, "dag_run")
    params = _get(context, "params") or {}
    conf = _get(dag_run, "conf") or {}
    override = _get(params, "business_date") or _get(conf, "business_date")
    when = (
        _get(context, "logical_date")
        or _get(dag_run, "logical_date")
        or _get(dag_run, "run_after")
        or _get(dag_run, "start_date")
    )
    if not override and when is None:
        # the dag-processor's minimal context (no failed task): dag, run_id, reason;
        # Airflow's run ids end with the run's date (`scheduled__2026-03-02T02:00:00+00:00`)
        _, _, tail = str(_get(context, "run_id") or "").partition("__")
        try:
            when = datetime.fromisoformat(tail)
        except ValueError:
            return None
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return business_date_for(when, override or None)


# --- the replica fallback --------------------------------------------------------------


def replica_fallback(
    reason: str,
    lag_seconds: float | None,
    max_lag_seconds: float,
    *,
    run_id: str | None = None,
    airflow: AirflowRun = NO_AIRFLOW_RUN,
    sinks: Sequence[AlertSink] | None = None,
) -> list[Alert]:
    """The `replica_fallback` rule, when the extract reads the primary because the replica
    lags past SOURCE_DB_REPLICA_MAX_LAG_SECONDS or cannot be read. `run_id`: the
    nightly's run (its business day). Without `airflow.run_id`, inside an Airflow task the
    run (business day, Airflow run id) comes from its context. Never raises."""
    try:
        if airflow.run_id is None:
            run_id, airflow = _run_in_context(run_id, airflow.dag_id)
        metrics = {
            "run_id": run_id,
            "dag_id": airflow.dag_id or NIGHTLY_DAG_ID,
            "replica_fallback": {
                "reason": reason,
                "lag_seconds": lag_seconds,
                "max_lag_seconds": max_lag_seconds,
            },
        }
        return alert_run(metrics, [], rules={"replica_fallback"}, airflow=airflow, sinks=sinks)
    except Exception:
        log.exception("alerts: the replica fallback alert failed")
        return []


def _run_in_context(run_id: str | None, dag_id: str | None) -> tuple[str | None, AirflowRun]:
    """The run id (the nightly's business day, unless given) and the Airflow run of the
    task this code runs in; `dag_id` when given, else the task's."""
    ctx_dag, ctx_run, ctx = current_airflow_run()
    dag_id = dag_id or ctx_dag
    if run_id is None and ctx is not None and (dag_id or NIGHTLY_DAG_ID) == NIGHTLY_DAG_ID:
        day = business_date_of(ctx)
        run_id = day.isoformat() if day else None
    return run_id, AirflowRun(dag_id, ctx_run)


# --- a failed run ----------------------------------------------------------------------


def _since(steps: list[dict[str, Any]], start: datetime | None) -> list[dict[str, Any]]:
    if start is None:
        return steps
    kept = []
    for step in steps:
        try:
            began = datetime.fromisoformat(str(step.get("started_at")))
        except ValueError:
            continue
        if began.tzinfo is None:
            began = began.replace(tzinfo=UTC)
        if began >= start:
            kept.append(step)
    return kept


def _failed_gate_checks(run_id: str, start: datetime | None) -> list[str]:
    """Critical checks of `run_id` that failed (since `start`), as the published warehouse's
    `ops.quality_results` holds them after a failed gate."""
    from core import settings
    from warehouse.backends import as_warehouse

    wh = as_warehouse(settings.warehouse_lease_target())
    if wh.kind == "duckdb" and not Path(wh.path).exists():
        return []
    exists = wh.read_arrow(
        "select count(*) from information_schema.tables "
        "where table_schema = 'ops' and table_name = 'quality_results'"
    ).column(0)[0]
    if not exists.as_py():
        return []
    rows = wh.read_arrow(
        "select suite, expectation, column_name, checked_at from {ops}.quality_results "
        "where run_id = ? and not success and severity = 'critical' "
        "order by suite, expectation, column_name",
        [run_id],
    ).to_pylist()
    checks = []
    for row in rows:
        checked = row["checked_at"]
        if start is not None and checked is not None:
            if checked.tzinfo is None:
                checked = checked.replace(tzinfo=UTC)
            if checked < start:
                continue  # an earlier attempt of the day
        column = f".{row['column_name']}" if row["column_name"] else ""
        checks.append(f"{row['suite']}:{row['expectation']}{column}")
    return checks


_FIRST_STEP = "extract_source_db"


def failed_run_metrics(
    business_date: date, start: datetime | None = None, dag_id: str = NIGHTLY_DAG_ID
) -> dict[str, Any]:
    """The metrics of a run that failed before publishing (the `alerting.rules` shape),
    from what it left since `start` (its Airflow start): step files, landed manifests,
    the failed gate in the published `ops.quality_results`, a failed parity check."""
    from core import run_steps

    run_id = business_date.isoformat()
    if start is not None and start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    # The attempt began with its extract: under `airflow dags test` the run's start_date
    # is its logical date, so the extract's own start is the better bound when later.
    first = next(
        (s for s in _since(run_steps.read_steps(run_id), start) if s["task"] == _FIRST_STEP),
        None,
    )
    if first is not None:
        began = datetime.fromisoformat(first["started_at"])
        start = max(start, began) if start is not None else began
    steps = _since(run_steps.read_steps(run_id), start)
    by_task = {s.get("task"): s for s in steps}
    metrics: dict[str, Any] = {"run_id": run_id, "dag_id": dag_id, "business_date": run_id}
    if first is not None and start is not None:  # nothing ran: no duration to judge
        metrics["duration_s"] = (datetime.now(UTC) - start).total_seconds()
    rows: dict[str, Any] = {}
    extracted = by_task.get("extract_source_db") or {}
    if extracted.get("status") == "success" and isinstance(extracted.get("summary"), dict):
        rows.update({k: v for k, v in extracted["summary"].items() if isinstance(v, int)})
        metrics["replica_lag_s"] = run_steps.replica_lag(run_id)
    api = by_task.get("extract_payments_api") or {}
    if api.get("status") == "success" and isinstance(api.get("summary"), dict):
        summary = api["summary"]
        rows.update({k: summary[k] for k in ("payments", "fx_rates") if k in summary})
        metrics["quarantined"] = {"payments": summary.get("payments_quarantined", 0)}
    if rows:
        metrics["rows_extracted"] = rows
    failed = _failed_gate_checks(run_id, start)
    parity = by_task.get("check_parity") or {}
    if parity.get("status") == "failed" and "disagree on" in str(parity.get("error", "")):
        failed.append(f"parity: {parity['error']}")
    metrics["quality"] = {"critical_failures": len(failed), "failed_checks": failed}
    metrics["failed_steps"] = [s["task"] for s in steps if s.get("status") == "failed"]
    return metrics


def failed_run_alerts(
    context: Mapping[str, Any] | None, sinks: Sequence[AlertSink] | None = None
) -> list[Alert]:
    """The rules on a failed nightly run (from the DAG's failure callback context)."""
    from core import run_steps, settings
    from warehouse.backends import as_warehouse

    context = context or {}
    dag_run = _get(context, "dag_run")
    dag_id = _get(dag_run, "dag_id") or _get(_get(context, "dag"), "dag_id") or NIGHTLY_DAG_ID
    airflow_run_id = _get(context, "run_id") or _get(dag_run, "run_id")
    day = business_date_of(context)
    if day is None:
        log.warning("alerts: the failed run's business day is unknown; rules not evaluated")
        return []
    start = _get(dag_run, "start_date")
    if isinstance(start, str):
        start = datetime.fromisoformat(start)
    metrics = failed_run_metrics(day, start if isinstance(start, datetime) else None, dag_id)
    published = as_warehouse(settings.warehouse_lease_target())
    history = run_steps.history(published, metrics["run_id"])
    return alert_run(metrics, history, airflow=AirflowRun(dag_id, airflow_run_id), sinks=sinks)


def published_run_alerts(
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    thresholds: Thresholds | None = None,
    sinks: Sequence[AlertSink] | None = None,
) -> list[Alert]:
    """The rules on a published run (the `check_alerts` task), linked to the Airflow run
    this task belongs to (none when run without Airflow)."""
    dag_id, airflow_run_id, _ = current_airflow_run()
    return alert_run(
        metrics,
        history,
        thresholds=thresholds,
        airflow=AirflowRun(dag_id, airflow_run_id),
        sinks=sinks,
    )
