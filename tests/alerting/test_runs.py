"""Alerts of a run wherever it ends (alerting/runs.py), sent to a real loopback webhook:
the failure path fires `quality` for a failed gate, the replica fallback raises
`replica_fallback`, `for_runs` needs consecutive runs, every alert links to its run."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import duckdb
import pytest

from alerting.callbacks import on_dag_failure
from alerting.rules import Thresholds
from alerting.runs import (
    AirflowRun,
    alert_run,
    earlier_conditions,
    failed_run_alerts,
    replica_fallback,
    run_url,
)
from extract.replica import choose_read_url
from pipeline.run_metrics import timed
from quality.validate import ExpectationOutcome, SuiteResult
from tests.alerting.test_callbacks import RUN_ID, airflow_context
from tests.alerting.test_sinks import Receiver, receiver_running

BASE = "https://airflow.example.test/ui"
LINK = f"{BASE}/dags/nightly_sales/runs/{quote(RUN_ID, safe='')}"
DAY = date(2026, 3, 1)  # the business day of RUN_ID's logical date (2026-03-02 02:00 UTC)
PRIMARY = "postgresql://etl:primary-secret@db.example.test:5432/shop"
REPLICA = "postgresql://etl:replica-secret@replica.example.test:5432/shop"


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Receiver]:
    data = tmp_path / "data"
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(data))
    for name in ("WAREHOUSE_PATH", "AIRFLOW_CONN_WAREHOUSE", "ALERTS_CONFIG", "DBT_TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REPORT_TZ", "UTC")
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE + "/")
    with receiver_running() as receiver:
        monkeypatch.setenv("AIRFLOW_CONN_ALERTS_WEBHOOK", receiver.url)
        yield receiver


def texts(receiver: Receiver) -> list[str]:
    return [p["text"] for p in receiver.json_bodies()]


def failed_context(minutes_ago: float = 5) -> dict:
    """A real Airflow 3 task context of RUN_ID whose run started `minutes_ago`."""
    context = airflow_context(try_number=1)
    started = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    context["dag_run"] = context["dag_run"].model_copy(update={"start_date": started})
    context["reason"] = "task_failure"
    return context


def published_warehouse(data: Path) -> Path:
    """A published DuckDB warehouse (empty but real) where a failed gate is recorded."""
    data.mkdir(parents=True, exist_ok=True)
    path = data / "warehouse.duckdb"
    duckdb.connect(str(path)).close()
    return path


def critical_result(run_id: str) -> SuiteResult:
    outcome = ExpectationOutcome(
        suite="analytics.daily_sales",
        table="analytics.daily_sales",
        expectation="expect_column_values_to_not_be_null",
        column="region",
        severity="critical",
        success=False,
        unexpected_count=3,
        element_count=40,
    )
    return SuiteResult("analytics.daily_sales", "analytics.daily_sales", run_id, [outcome], 40)


def fail_step(name: str, exc: Exception) -> None:
    """Run a nightly step named `name` that raises `exc` (its step file records it)."""

    def step(business_date: date) -> None:
        raise exc

    step.__name__ = name
    with pytest.raises(type(exc)):
        timed(step)(DAY)


# --- links ---------------------------------------------------------------------------


def test_run_url_encodes_the_run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    assert run_url("nightly_sales", "manual__2026-03-02T02:00:00+00:00") == (
        "http://localhost:8080/dags/nightly_sales/runs/manual__2026-03-02T02%3A00%3A00%2B00%3A00"
    )
    assert run_url("d", "a/b c", "https://af.test/x/") == "https://af.test/x/dags/d/runs/a%2Fb%20c"
    assert run_url(None, "r") is None and run_url("d", None) is None


# --- quality: evaluated on the failure path ------------------------------------------


def test_a_failed_gate_fires_quality_from_the_dag_failure_callback(
    webhook: Receiver, tmp_path: Path
) -> None:
    from pipeline import nightly
    from quality.validate import QualityGateError

    published_warehouse(tmp_path / "data")
    where = nightly._record_failed_gate(DAY, [critical_result(DAY.isoformat())], None)
    assert "ops.quality_results" in where  # the gate's record outlives the abandoned build
    fail_step("transform_daily_sales", QualityGateError("daily_sales: 1 critical failure", []))

    on_dag_failure(failed_context())

    dag_failed, quality = webhook.json_bodies()
    assert dag_failed["text"].startswith("[CRITICAL] DAG run failed: nightly_sales")
    assert quality["text"].startswith("[CRITICAL] Critical data quality failure")
    assert "rule quality: 1 critical quality failure(s), threshold 0" in quality["text"]
    assert "analytics.daily_sales:expect_column_values_to_not_be_null.region" in quality["text"]
    assert quality["text"].endswith(f"<{LINK}>")
    assert any(LINK in str(b) for b in quality["blocks"])


def test_a_parity_failure_fires_quality(webhook: Receiver) -> None:
    from quality.parity import ParityError

    fail_step(
        "check_parity",
        ParityError(
            "analytics.daily_sales and analytics.sales_summary disagree on 2 (date, region) row(s):\n  x"
        ),
    )
    alerts = failed_run_alerts(failed_context())
    assert [a.fields["rule"] for a in alerts] == ["quality"]
    assert (
        "parity: analytics.daily_sales and analytics.sales_summary disagree on 2" in alerts[0].text
    )


def test_a_run_failing_for_another_reason_keeps_quality_quiet(
    webhook: Receiver, tmp_path: Path
) -> None:
    published_warehouse(tmp_path / "data")
    fail_step("load_source_db", OSError("disk full"))
    assert failed_run_alerts(failed_context()) == []
    assert webhook.requests == []


def test_a_failed_gate_of_an_earlier_attempt_does_not_fire_again(
    webhook: Receiver, tmp_path: Path
) -> None:
    from pipeline import nightly

    published_warehouse(tmp_path / "data")
    nightly._record_failed_gate(DAY, [critical_result(DAY.isoformat())], None)
    # the rerun started after the gate's record and failed elsewhere
    context = failed_context(minutes_ago=-1)
    assert [a.fields["rule"] for a in failed_run_alerts(context)] == []


def extracted(minutes_ago: float) -> None:
    """The run's extract_source_db step file, as `timed` writes it, begun `minutes_ago`."""
    from core import run_steps

    began = datetime.now(UTC).timestamp() - minutes_ago * 60
    run_steps.record(
        DAY.isoformat(),
        "extract_source_db",
        began,
        began + 1,
        {"status": "success", "summary": {"orders": 10}},
    )


def test_the_failure_path_evaluates_deadline_and_quarantine_from_the_step_files(
    webhook: Receiver,
) -> None:
    @timed
    def extract_payments_api(business_date: date) -> dict:
        return {"payments": 50, "payments_quarantined": 150, "payments_replayed": 0, "fx_rates": 1}

    extracted(minutes_ago=121)
    extract_payments_api(DAY)
    fail_step("load_payments_api", RuntimeError("boom"))
    fired = [a.fields["rule"] for a in failed_run_alerts(failed_context(minutes_ago=200))]
    assert fired == ["quarantine", "run_deadline"]


def test_the_failure_path_times_the_attempt_from_its_extract(webhook: Receiver) -> None:
    # `airflow dags test` starts the run at its logical date: the extract's start counts
    extracted(minutes_ago=5)
    fail_step("load_source_db", RuntimeError("boom"))
    assert failed_run_alerts(failed_context(minutes_ago=10**6)) == []
    # an extract of an earlier attempt (before this run started) is not this run's
    extracted(minutes_ago=300)
    assert failed_run_alerts(failed_context(minutes_ago=200)) == []


# --- replica fallback ----------------------------------------------------------------


def test_the_fallback_to_the_primary_raises_a_warning(webhook: Receiver) -> None:
    choice = choose_read_url(
        PRIMARY, REPLICA, max_lag_seconds=300, on_lag="primary", lag_fn=lambda url: 400.0
    )
    assert not choice.used_replica
    [payload] = webhook.json_bodies()
    assert payload["text"].startswith("[WARNING] Extract read the primary: replica unusable")
    assert "rule replica_fallback: source_db_replica lag 400 s" in payload["text"]
    assert "SOURCE_DB_REPLICA_MAX_LAG_SECONDS 300 s" in payload["text"]
    assert "secret" not in str(payload)  # passwords never reach the alert


def test_an_unreachable_replica_raises_the_warning_too(webhook: Receiver) -> None:
    def down(url: str) -> float:
        raise ConnectionRefusedError("connection refused")

    choose_read_url(PRIMARY, REPLICA, max_lag_seconds=300, on_lag="primary", lag_fn=down)
    [text] = texts(webhook)
    assert "lag inf s" in text and "unreachable" in text


def test_a_fresh_replica_keeps_the_fallback_quiet(webhook: Receiver) -> None:
    choice = choose_read_url(
        PRIMARY, REPLICA, max_lag_seconds=300, on_lag="primary", lag_fn=lambda url: 300.0
    )
    assert choice.used_replica
    assert webhook.requests == []


def test_the_fallback_alert_links_to_its_airflow_run(webhook: Receiver) -> None:
    [alert] = replica_fallback(
        "replica down",
        None,
        300,
        run_id="2026-03-01",
        airflow=AirflowRun("nightly_sales", RUN_ID),
    )
    assert alert.url == LINK and texts(webhook)[0].endswith(f"<{LINK}>")


# --- for_runs ------------------------------------------------------------------------


def stale(day: str) -> dict:
    return {"run_id": day, "dag_id": "nightly_sales", "freshness_lag_s": 40 * 3600}


def fresh(day: str) -> dict:
    return {"run_id": day, "dag_id": "nightly_sales", "freshness_lag_s": 3600}


def test_for_runs_fires_on_the_third_consecutive_run_only(webhook: Receiver) -> None:
    t = Thresholds(freshness_for_runs=3)
    assert alert_run(stale("2026-03-01"), [], thresholds=t) == []
    assert alert_run(stale("2026-03-02"), [], thresholds=t) == []
    [alert] = alert_run(stale("2026-03-03"), [], thresholds=t)
    assert alert.fields["for_runs"] == 3 and alert.text.endswith("(3 runs in a row)")
    assert len(webhook.requests) == 1
    # a rerun of the second day is re-recorded, not counted twice
    assert alert_run(stale("2026-03-02"), [], thresholds=t) == []
    assert earlier_conditions("2026-03-04", 5) == [{"freshness": {"freshness"}}] * 3


def test_for_runs_a_quiet_run_breaks_the_streak(webhook: Receiver) -> None:
    t = Thresholds(freshness_for_runs=3)
    for day, metrics in (("2026-03-01", stale), ("2026-03-02", fresh), ("2026-03-03", stale)):
        assert alert_run(metrics(day), [], thresholds=t) == []
    assert alert_run(stale("2026-03-04"), [], thresholds=t) == []
    assert len(alert_run(stale("2026-03-05"), [], thresholds=t)) == 1


def test_for_runs_a_run_that_could_not_evaluate_the_rule_neither_counts_nor_breaks(
    webhook: Receiver,
) -> None:
    t = Thresholds(freshness_for_runs=2, quality_for_runs=2)
    assert alert_run(stale("2026-03-01"), [], thresholds=t) == []
    # failed before anything was extracted: quality was evaluated (quiet), freshness not
    failed = {"run_id": "2026-03-02", "quality": {"critical_failures": 1}}
    assert alert_run(failed, [], thresholds=t) == []
    assert [a.fields["rule"] for a in alert_run(stale("2026-03-03"), [], thresholds=t)] == [
        "freshness"
    ]
    failed_again = {"run_id": "2026-03-04", "quality": {"critical_failures": 2}}
    [alert] = alert_run(failed_again, [], thresholds=t)
    assert alert.fields["rule"] == "quality" and alert.url is None  # no Airflow run: no link


def test_for_runs_counts_failed_runs_and_per_table_keys(webhook: Receiver) -> None:
    t = Thresholds(quarantine_for_runs=2)
    q = {"rows_extracted": {"payments": 50}, "quarantined": {"payments": 150}}
    other = {"rows_extracted": {"orders": 50}, "quarantined": {"orders": 150}}
    assert alert_run({"run_id": "2026-03-01", **other}, [], thresholds=t) == []
    assert alert_run({"run_id": "2026-03-02", **q}, [], thresholds=t) == []  # other table
    [alert] = alert_run({"run_id": "2026-03-03", **q}, [], thresholds=t)
    assert alert.fields["table"] == "payments"


# --- the published path: nightly.check_alerts ----------------------------------------


def publish_metrics(data: Path, freshness_h: float) -> None:
    """A published warehouse holding the run's metrics, as `publish` stores them."""
    from pipeline import run_metrics

    path = published_warehouse(data)
    metrics = {
        "run_id": DAY.isoformat(),
        "dag_id": "nightly_sales",
        "business_date": DAY.isoformat(),
        "started_at": None,
        "duration_s": 600.0,
        "freshness_lag_s": freshness_h * 3600,
        "rows_extracted": {"orders": 100},
        "quarantined": {"payments": 0},
        "rows_loaded": {},
        "rows_published": {},
        "restated_days": 1,
        "quality": {"checks": 10, "pass_rate": 1.0, "critical_failures": 0, "warnings": 0},
        "replica_lag_s": None,
        "steps": [],
    }
    con = duckdb.connect(str(path))
    try:
        run_metrics.store(con, metrics)
    finally:
        con.close()


def test_check_alerts_fires_on_the_published_metrics_and_records_them(
    webhook: Receiver, tmp_path: Path
) -> None:
    from pipeline import nightly

    publish_metrics(tmp_path / "data", freshness_h=40)
    assert nightly.check_alerts(DAY)["alerts"] == 1
    [text] = texts(webhook)
    assert text.startswith("[CRITICAL] Source data is stale") and "40 h old" in text
    [recorded] = earlier_conditions("2026-03-02", 1)
    assert recorded["freshness"] == {"freshness"} and recorded["quality"] == set()


def test_check_alerts_is_quiet_on_a_healthy_run(webhook: Receiver, tmp_path: Path) -> None:
    from pipeline import nightly

    publish_metrics(tmp_path / "data", freshness_h=2)
    assert nightly.check_alerts(DAY)["alerts"] == 0
    assert webhook.requests == []
    [recorded] = earlier_conditions("2026-03-02", 1)
    assert recorded["freshness"] == set() and "replica_lag" not in recorded  # no input


def test_a_minimal_dag_callback_context_still_reaches_the_rules(
    webhook: Receiver, tmp_path: Path
) -> None:
    # no failed task (e.g. a run timed out): Airflow passes dag, run_id and reason only
    from airflow.sdk import DAG

    from pipeline import nightly

    published_warehouse(tmp_path / "data")
    nightly._record_failed_gate(DAY, [critical_result(DAY.isoformat())], None)
    dag = DAG("nightly_sales", schedule=None)
    on_dag_failure({"dag": dag, "run_id": RUN_ID, "reason": "timed_out"})
    assert [t.split(" (")[0] for t in texts(webhook)] == [
        "[CRITICAL] DAG run failed: nightly_sales",
        "[CRITICAL] Critical data quality failure",
    ]
    assert all(t.endswith(f"<{LINK}>") for t in texts(webhook))
