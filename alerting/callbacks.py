"""Airflow 3 callbacks that send alerts: task failure / retry, DAG failure, missed deadline.

Use them as `on_failure_callback` / `on_retry_callback` (in `default_args` for every task,
or on the `@dag` for the run) and `deadline=nightly_deadline(minutes)` on the `@dag`.

They read the context defensively (task-level: `ti`, `dag_run`, `exception`, ...;
DAG-level: `dag`, `run_id`, `reason` and, when Airflow knows it, the last `ti`;
deadline: `dag_run` as the REST API's JSON and `deadline`) and never raise: a broken
alert must not change the outcome of the run it reports on.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alerting.runs import NIGHTLY_DAG_ID, failed_run_alerts, run_url
from alerting.sinks import Alert, AlertSink, send_all
from core import settings

if TYPE_CHECKING:
    from airflow.sdk import DeadlineAlert

log = logging.getLogger(__name__)


def _get(obj: Any, name: str) -> Any:
    """Attribute or key `name` of `obj`, None when missing or when reading it fails."""
    if obj is None:
        return None
    try:
        if isinstance(obj, Mapping):
            return obj.get(name)
        return getattr(obj, name, None)
    except Exception:  # properties that call the API server (ti.log_url, ...) may fail
        return None


def _first_line(error: Any) -> str | None:
    if error is None:
        return None
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    name = type(error).__name__ if isinstance(error, BaseException) else ""
    if name and line:
        return f"{name}: {line}"[:500]
    return (name or line)[:500] or None


def alert_from_context(context: Mapping[str, Any] | None, *, kind: str) -> Alert:
    """Build the alert of a `task_failure`, `task_retry` or `dag_failure` callback."""
    context = context or {}
    ti = _get(context, "ti") or _get(context, "task_instance")
    dag_run = _get(context, "dag_run")
    dag = _get(context, "dag")
    task = _get(context, "task")

    dag_id = _get(ti, "dag_id") or _get(dag_run, "dag_id") or _get(dag, "dag_id")
    run_id = _get(context, "run_id") or _get(ti, "run_id") or _get(dag_run, "run_id")
    task_id = _get(ti, "task_id") or _get(task, "task_id")
    try_number = _get(ti, "try_number")
    max_tries = _get(ti, "max_tries")
    if max_tries is None:
        retries = _get(task, "retries")
        max_tries = retries if isinstance(retries, int) else None
    error = _first_line(_get(context, "exception")) or _get(context, "reason")
    log_url = _get(ti, "log_url")

    fields: dict[str, Any] = {}
    if try_number is not None:
        # Airflow's max_tries counts retries; the attempts in all are max_tries + 1
        fields["try"] = f"{try_number}/{max_tries + 1}" if max_tries is not None else try_number
    if error:
        fields["error"] = error
    if log_url:
        fields["log"] = log_url
    map_index = _get(ti, "map_index")
    if isinstance(map_index, int) and map_index >= 0:
        fields["map_index"] = map_index

    if kind == "task_failure":
        severity, title = "critical", f"Task failed: {dag_id}.{task_id}"
    elif kind == "task_retry":
        severity, title = "warning", f"Task up for retry: {dag_id}.{task_id}"
    elif kind == "dag_failure":
        severity, title = "critical", f"DAG run failed: {dag_id}"
    else:
        raise ValueError(f"kind {kind!r} is not one of task_failure, task_retry, dag_failure")

    parts = [f"dag {dag_id}"]
    if task_id:
        parts.append(f"task {task_id}")
    parts.append(f"run {run_id}")
    if "try" in fields:
        parts.append(f"try {fields['try']}")
    text = ", ".join(parts)
    if error:
        text += f": {error}"
    if log_url:
        text += f" (log: {log_url})"
    return Alert(
        severity=severity,
        title=title,
        text=text,
        dag_id=dag_id,
        task_id=task_id,
        run_id=run_id,
        fields=fields,
        url=run_url(dag_id, run_id),
    )


def _notify(context: Any, kind: str, sinks: Sequence[AlertSink] | None) -> None:
    try:
        send_all([alert_from_context(context, kind=kind)], sinks)
    except Exception:  # never raise from a callback
        log.exception("alerting: the %s callback failed", kind)


def on_task_failure(context: Any, sinks: Sequence[AlertSink] | None = None) -> None:
    """`on_failure_callback` of a task: a critical alert."""
    _notify(context, "task_failure", sinks)


def on_task_retry(context: Any, sinks: Sequence[AlertSink] | None = None) -> None:
    """`on_retry_callback` of a task: a warning."""
    _notify(context, "task_retry", sinks)


def on_dag_failure(context: Any, sinks: Sequence[AlertSink] | None = None) -> None:
    """`on_failure_callback` of the DAG (runs in the dag-processor; in-process under
    `airflow dags test`): a critical alert, then, for `nightly_sales`, the alert rules on
    the failed run (`alerting.runs.failed_run_alerts`: a failed quality gate fires the
    `quality` rule although the run never published)."""
    _notify(context, "dag_failure", sinks)
    try:
        alert = alert_from_context(context, kind="dag_failure")
        if alert.dag_id == NIGHTLY_DAG_ID:
            failed_run_alerts(context, sinks)
    except Exception:  # never raise from a callback
        log.exception("alerting: the rules on the failed run could not be evaluated")


def deadline_alert_from_context(
    context: Mapping[str, Any] | None, minutes: float | None = None
) -> Alert:
    """The alert of a missed deadline.

    Airflow 3.3 calls the deadline callback with `context={"dag_run": <DAGRunResponse
    JSON: dag_id, dag_run_id, queued_at, start_date, ...>, "deadline": {"id",
    "deadline_time"}}` plus the kwargs given to the callback.
    """
    context = context or {}
    dag_run = _get(context, "dag_run") or {}
    deadline = _get(context, "deadline") or {}
    dag_id = _get(dag_run, "dag_id")
    run_id = _get(dag_run, "dag_run_id") or _get(dag_run, "run_id")
    fields: dict[str, Any] = {}
    for key in ("queued_at", "start_date", "state"):
        value = _get(dag_run, key)
        if value is not None:
            fields[key] = str(value)
    if _get(deadline, "deadline_time") is not None:
        fields["deadline_time"] = str(_get(deadline, "deadline_time"))
    if minutes is not None:
        fields["deadline_minutes"] = minutes
    limit = f"{minutes:g} min after it was queued" if minutes is not None else "its deadline"
    text = f"rule run_deadline: dag {dag_id} run {run_id} is still running {limit}"
    if "deadline_time" in fields:
        text += f" (deadline {fields['deadline_time']})"
    return Alert(
        severity="critical",
        title=f"Deadline missed: {dag_id}",
        text=text,
        dag_id=dag_id,
        run_id=run_id,
        fields=fields,
        url=run_url(dag_id, run_id),
    )


def on_deadline_missed(
    context: Mapping[str, Any] | None = None, minutes: float | None = None, **_: Any
) -> None:
    """Deadline callback (`SyncCallback`: runs on the executor, no triggerer needed)."""
    try:
        send_all([deadline_alert_from_context(context, minutes)])
    except Exception:
        log.exception("alerting: the deadline callback failed")


async def on_deadline_missed_async(
    context: Mapping[str, Any] | None = None, minutes: float | None = None, **_: Any
) -> None:
    """Deadline callback for `AsyncCallback` (runs in the triggerer)."""
    await asyncio.to_thread(on_deadline_missed, context, minutes)


def nightly_deadline(minutes: float, *, use_triggerer: bool = False) -> DeadlineAlert:
    """A `DeadlineAlert`: alert when a run is not done `minutes` after it was queued.

    By default the callback is a `SyncCallback`, run by the executor (LocalExecutor
    supports callbacks): the scheduler detects the miss, no triggerer is needed.
    `use_triggerer=True` uses an `AsyncCallback`, which needs a running triggerer.
    """
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference, SyncCallback

    if minutes <= 0:
        raise ValueError(f"deadline minutes must be > 0, got {minutes}")
    kwargs = {"minutes": minutes}
    callback = (
        AsyncCallback(on_deadline_missed_async, kwargs=kwargs)
        if use_triggerer
        else SyncCallback(on_deadline_missed, kwargs=kwargs)
    )
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=minutes),
        callback=callback,
        name=f"run longer than {minutes:g} min",
    )


def _in_dags_test(argv: Sequence[str] | None = None) -> bool:
    """True when the DAG file is parsed by `airflow dags test`."""
    argv = sys.argv if argv is None else argv
    return (
        len(argv) >= 3 and Path(argv[0]).name == "airflow" and list(argv[1:3]) == ["dags", "test"]
    )


def run_deadline(argv: Sequence[str] | None = None) -> DeadlineAlert | None:
    """The `deadline=` of the nightly DAG, from the `run_deadline` rule's `max_minutes`.

    `NIGHTSHIFT_RUN_DEADLINE_MINUTES` overrides the config file; 0 turns the deadline
    off. None under `airflow dags test`: Airflow 3.3's `dag.test()` deserialises the
    DAG without storing its deadline alerts and then fails looking them up
    (`'dict' object has no attribute 'hex'` in `DagRun.update_state`). A test run is
    watched in the foreground, and the `run_deadline` rule still reports a finished run
    that took too long; scheduled runs (scheduler + executor) get the DeadlineAlert.
    """
    if _in_dags_test(argv):
        return None
    raw = settings.env("NIGHTSHIFT_RUN_DEADLINE_MINUTES")
    if raw:
        minutes = float(raw)
    else:
        from alerting.rules import load_thresholds

        # a plain read of ALERTS_CONFIG: the DAG file calls this at parse time, where the
        # settings model (pydantic-settings) is not loaded
        config = settings.env("ALERTS_CONFIG")
        path = Path(config).resolve() if config else None
        minutes = load_thresholds(path).run_deadline_max_minutes
    return nightly_deadline(minutes) if minutes > 0 else None
