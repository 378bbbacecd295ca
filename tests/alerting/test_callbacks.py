"""Callbacks with a real Airflow 3 context send one alert each to a real loopback webhook."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pendulum
import pytest

from alerting.callbacks import (
    alert_from_context,
    nightly_deadline,
    on_dag_failure,
    on_deadline_missed,
    on_deadline_missed_async,
    on_task_failure,
    on_task_retry,
)
from tests.alerting.test_sinks import Receiver, receiver_running

DAG_ID = "nightly_sales"
TASK_ID = "load_warehouse"
RUN_ID = "scheduled__2026-03-02T02:00:00+00:00"


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[Receiver]:
    """The `alerts_webhook` connection points at a real receiver on loopback; the run
    files and warehouse the DAG failure callback reads are the test's own (empty)."""
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WAREHOUSE_PATH", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_WAREHOUSE", raising=False)
    monkeypatch.delenv("ALERTS_CONFIG", raising=False)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.test/ui/")
    with receiver_running() as receiver:
        monkeypatch.setenv("AIRFLOW_CONN_ALERTS_WEBHOOK", receiver.url)
        yield receiver


def airflow_context(*, try_number: int = 1, exception: BaseException | None = None) -> dict:
    """The context Airflow 3's task runner builds (RuntimeTaskInstance.get_template_context)."""
    from airflow.sdk import DAG
    from airflow.sdk.api.datamodels._generated import DagRun, TIRunContext
    from airflow.sdk.bases.operator import BaseOperator
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    with DAG(DAG_ID, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
        task = BaseOperator(task_id=TASK_ID, retries=2)
    when = pendulum.datetime(2026, 3, 2, 2, tz="UTC")
    dag_run = DagRun(
        dag_id=DAG_ID,
        run_id=RUN_ID,
        logical_date=when,
        run_after=when,
        data_interval_start=None,
        data_interval_end=None,
        start_date=when,
        end_date=None,
        run_type="scheduled",
        state="running",
        conf={},
        clear_number=0,
        consumed_asset_events=[],
        partition_key=None,
    )
    ti = RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(),
        task_id=TASK_ID,
        dag_id=DAG_ID,
        run_id=RUN_ID,
        try_number=try_number,
        map_index=-1,
        max_tries=2,
        task=task,
        dag_version_id=uuid.uuid4(),
        _ti_context_from_server=TIRunContext.model_construct(dag_run=dag_run, max_tries=2),
    )
    context = ti.get_template_context()
    if exception is not None:
        context["exception"] = exception  # what the task runner adds before the callbacks
    return context


def test_task_failure_sends_one_alert_naming_dag_task_run_try_error_and_log(
    webhook: Receiver,
) -> None:
    error = OSError("disk full\nTraceback line that must not be in the alert")

    on_task_failure(airflow_context(try_number=3, exception=error))

    [payload] = webhook.json_bodies()
    text = payload["text"]
    assert text.startswith("[CRITICAL] Task failed: nightly_sales.load_warehouse")
    for expected in (f"dag {DAG_ID}", f"task {TASK_ID}", f"run {RUN_ID}", "try 3/3"):
        assert expected in text
    assert "OSError: disk full" in text and "Traceback" not in text
    assert f"/dags/{DAG_ID}/runs/" in text and "try_number=3" in text  # the log URL


def test_task_retry_sends_a_warning(webhook: Receiver) -> None:
    on_task_retry(airflow_context(try_number=1, exception=TimeoutError("source timed out")))

    [payload] = webhook.json_bodies()
    assert payload["text"].startswith("[WARNING] Task up for retry: nightly_sales.load_warehouse")
    assert "try 1/3" in payload["text"] and "TimeoutError: source timed out" in payload["text"]


def test_dag_failure_with_last_ti_context(webhook: Receiver) -> None:
    # the dag-processor passes the last failed TI's context plus `reason`
    context = airflow_context(try_number=3)
    context["reason"] = "task_failure"

    on_dag_failure(context)

    # the DAG failure; the rules on the failed run find nothing of it on disk: quiet
    [payload] = webhook.json_bodies()
    assert payload["text"].startswith("[CRITICAL] DAG run failed: nightly_sales")
    assert f"run {RUN_ID}" in payload["text"] and "task_failure" in payload["text"]
    link = "https://airflow.example.test/ui/dags/nightly_sales/runs/" + quote(RUN_ID, safe="")
    assert payload["text"].endswith(f"<{link}>")


def test_dag_failure_with_minimal_context(webhook: Receiver) -> None:
    # without a last TI Airflow passes only dag, run_id and reason
    from airflow.sdk import DAG

    dag = DAG(DAG_ID, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"))

    on_dag_failure({"dag": dag, "run_id": RUN_ID, "reason": "timed_out"})

    [payload] = webhook.json_bodies()
    assert f"dag {DAG_ID}, run {RUN_ID}: timed_out" in payload["text"]


@pytest.mark.parametrize("context", [None, {}, {"ti": object()}, {"exception": "x"}])
def test_callbacks_never_raise_on_odd_contexts(webhook: Receiver, context: object) -> None:
    on_task_failure(context)
    on_task_retry(context)
    on_dag_failure(context)
    assert len(webhook.requests) == 3


def test_callback_never_raises_when_the_webhook_is_dead(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.alerting.test_sinks import closed_port

    monkeypatch.setenv(
        "AIRFLOW_CONN_ALERTS_WEBHOOK", f"http://127.0.0.1:{closed_port()}/services/T/B/tok3n"
    )
    import alerting.sinks

    monkeypatch.setattr(alerting.sinks.time, "sleep", lambda s: None)

    on_task_failure(airflow_context(exception=RuntimeError("boom")))

    assert "failed after 3 attempts" in caplog.text and "tok3n" not in caplog.text
    assert "Task failed: nightly_sales.load_warehouse" in caplog.text  # the log sink still ran


def test_alert_from_context_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="task_failure, task_retry, dag_failure"):
        alert_from_context({}, kind="task_success")


DEADLINE_CONTEXT = {
    # what Deadline.handle_miss passes: the DAGRunResponse JSON and the deadline
    "dag_run": {
        "dag_id": DAG_ID,
        "dag_run_id": RUN_ID,
        "queued_at": "2026-03-02T02:00:05Z",
        "start_date": "2026-03-02T02:00:06Z",
        "state": "running",
    },
    "deadline": {"id": str(uuid.uuid4()), "deadline_time": "2026-03-02T04:00:05Z"},
}


def test_deadline_callback_sends_one_alert(webhook: Receiver) -> None:
    on_deadline_missed(context=DEADLINE_CONTEXT, minutes=120)

    [payload] = webhook.json_bodies()
    text = payload["text"]
    assert text.startswith("[CRITICAL] Deadline missed: nightly_sales")
    assert f"run {RUN_ID}" in text and "120 min after it was queued" in text
    assert "2026-03-02T04:00:05Z" in text


def test_async_deadline_callback_sends_one_alert(webhook: Receiver) -> None:
    asyncio.run(on_deadline_missed_async(context=DEADLINE_CONTEXT, minutes=90))

    [payload] = webhook.json_bodies()
    assert "90 min after it was queued" in payload["text"]


def test_deadline_callbacks_never_raise(webhook: Receiver) -> None:
    on_deadline_missed()
    on_deadline_missed(context={"dag_run": "garbage"}, minutes=5, unexpected="kwarg")
    assert len(webhook.requests) == 2


def test_nightly_deadline_is_a_sync_deadline_alert() -> None:
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference, SyncCallback

    alert = nightly_deadline(120)

    assert isinstance(alert, DeadlineAlert)
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval == timedelta(minutes=120)
    assert isinstance(alert.callback, SyncCallback)
    assert alert.callback.path == "alerting.callbacks.on_deadline_missed"
    assert alert.callback.kwargs == {"minutes": 120}
    assert isinstance(nightly_deadline(5, use_triggerer=True).callback, AsyncCallback)
    with pytest.raises(ValueError, match="must be > 0"):
        nightly_deadline(0)


def test_dag_with_callbacks_and_deadline_serializes(caplog: pytest.LogCaptureFixture) -> None:
    """What the scheduler stores: the deadline's callback path and kwargs survive."""
    from airflow.sdk import DAG
    from airflow.sdk.bases.operator import BaseOperator
    from airflow.serialization.serialized_objects import DagSerialization

    caplog.set_level(logging.WARNING)
    with DAG(
        DAG_ID,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        on_failure_callback=on_dag_failure,
        deadline=nightly_deadline(120),
        default_args={"on_failure_callback": on_task_failure, "on_retry_callback": on_task_retry},
    ) as dag:
        BaseOperator(task_id=TASK_ID)

    serialized = json.dumps(DagSerialization.to_dict(dag), default=str)

    assert "alerting.callbacks.on_deadline_missed" in serialized
    assert '"minutes": 120' in serialized
    restored = DagSerialization.from_dict(json.loads(serialized))
    assert restored.has_on_failure_callback


def test_run_deadline_comes_from_the_alert_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from alerting.callbacks import run_deadline
    from alerting.rules import load_thresholds

    monkeypatch.delenv("NIGHTSHIFT_RUN_DEADLINE_MINUTES", raising=False)
    configured = load_thresholds().run_deadline_max_minutes
    alert = run_deadline(argv=["/venv/bin/airflow", "scheduler"])
    assert alert is not None and alert.interval == timedelta(minutes=configured)

    # the file ALERTS_CONFIG names, as the rules read it (alerting.runs)
    own = tmp_path / "alerts.yml"
    own.write_text("run_deadline:\n  max_minutes: 45\n")
    monkeypatch.setenv("ALERTS_CONFIG", str(own))
    assert run_deadline(argv=["airflow", "scheduler"]).interval == timedelta(minutes=45)

    monkeypatch.setenv("NIGHTSHIFT_RUN_DEADLINE_MINUTES", "7.5")
    assert run_deadline(argv=["airflow", "dag-processor"]).interval == timedelta(minutes=7.5)
    monkeypatch.setenv("NIGHTSHIFT_RUN_DEADLINE_MINUTES", "0")
    assert run_deadline(argv=["airflow", "dag-processor"]) is None


def test_run_deadline_is_left_out_under_airflow_dags_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """`airflow dags test` of a DAG with a deadline fails in Airflow 3.3 (see run_deadline)."""
    from alerting.callbacks import run_deadline

    monkeypatch.setenv("NIGHTSHIFT_RUN_DEADLINE_MINUTES", "30")
    assert run_deadline(argv=["/venv/bin/airflow", "dags", "test", "nightly_sales"]) is None
    assert run_deadline(argv=["/venv/bin/airflow", "dags", "list"]) is not None
    assert run_deadline(argv=["/venv/bin/pytest", "dags", "test"]) is not None
