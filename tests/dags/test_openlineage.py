"""OpenLineage through real Airflow: with a transport configured (here the file
transport, `AIRFLOW__OPENLINEAGE__TRANSPORT`), a `nightly_sales` run emits a START and a
COMPLETE event for each task that ran and a COMPLETE for the run, under the configured
namespace. Without a transport the provider stays off."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date
from pathlib import Path

import pytest

from demo.generator import generate
from demo.run import running_api
from pipeline.airflow_run import run_dag

DAY = date(2026, 3, 2)
TASKS = {
    "extract_source_db",
    "load_source_db",
    "extract_payments_api",
    "load_payments_api",
    "dbt_build",
    "transform_daily_sales",
    "check_parity",
    "publish",
    "announce_analytics",
    "build_report",
    "check_alerts",
    "apply_retention",
}


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_a_nightly_run_emits_openlineage_events(tmp_path: Path) -> None:
    pytest.importorskip("airflow.providers.openlineage")
    source, payments = tmp_path / "source.db", tmp_path / "payments.db"
    generate(
        f"sqlite:///{source}",
        seed=5,
        days=2,
        end_date=DAY,
        orders_per_day=5,
        payments_db=payments,
        if_exists="replace",
    )
    events_file = tmp_path / "lineage" / "events.jsonl"
    events_file.parent.mkdir()
    transport = {"type": "file", "log_file_path": str(events_file), "append": True}
    with running_api(payments, token="ol-tok") as api_uri:
        run_dag(
            DAY,
            {
                "AIRFLOW_HOME": str(tmp_path / "airflow"),
                "NIGHTSHIFT_DATA_DIR": str(tmp_path / "data"),
                "WAREHOUSE_PATH": str(tmp_path / "data" / "warehouse.duckdb"),
                "REPORT_TZ": "UTC",
                "AIRFLOW_CONN_SOURCE_DB": f"sqlite:///{source}",
                "AIRFLOW_CONN_PAYMENTS_API": api_uri,
                "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
                "AIRFLOW__OPENLINEAGE__NAMESPACE": "nightshift-test",
            },
        )
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line]
    states: dict[str, set[str]] = defaultdict(set)
    for event in events:
        assert event["job"]["namespace"] == "nightshift-test", event["job"]
        states[event["job"]["name"]].add(event["eventType"])
    for task_id in TASKS:  # a first run: every task runs, announce_analytics too
        assert {"START", "COMPLETE"} <= states[f"nightly_sales.{task_id}"], (task_id, states)
    # the DAG run's end (its start is the scheduler's to report; `airflow dags test` has none)
    assert "COMPLETE" in states["nightly_sales"], states
    assert "ol-tok" not in events_file.read_text()  # the API token is not in the lineage
