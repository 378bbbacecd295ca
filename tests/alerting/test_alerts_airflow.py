"""Alerts through real Airflow: `nightly_sales` under `airflow dags test` (run_dag) with a
replica that refuses connections and a source without the tables: the extract falls back
to the primary (a `replica_fallback` warning), then fails at once (a schema error is not
retried), and the DAG's failure callback sends the run's failure and evaluates the rules.
The payments API is the demo API on loopback (its extract runs beside the source's and
succeeds: only the source's failure may alert).
Every alert reaches a real webhook on loopback with the link to the run in the Airflow UI.
"""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import date
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from demo.generator import generate
from demo.run import running_api
from pipeline.airflow_run import run_dag
from tests.alerting.test_sinks import closed_port, receiver_running

DAY = date(2026, 3, 1)
BASE = "http://airflow.example.test:8080"


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_failed_nightly_sends_its_alerts_with_the_run_link(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    with sqlite3.connect(source) as con:
        con.execute("create table unrelated (id integer)")  # no users/orders/...: SchemaError
    payments = tmp_path / "payments.db"
    generate(
        f"sqlite:///{tmp_path / 'generated.db'}",
        seed=7,
        days=2,
        end_date=DAY,
        orders_per_day=5,
        payments_db=payments,
        if_exists="replace",
    )
    with receiver_running() as webhook, running_api(payments, token="alerts-tok") as api_uri:
        env = {
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "NIGHTSHIFT_DATA_DIR": str(tmp_path / "data"),
            "REPORT_TZ": "UTC",
            "AIRFLOW_CONN_SOURCE_DB": f"sqlite:///{source}",
            "AIRFLOW_CONN_SOURCE_DB_REPLICA": (
                f"postgresql://etl:replica-pw-4711@127.0.0.1:{closed_port()}/shop"
            ),
            "AIRFLOW_CONN_PAYMENTS_API": api_uri,
            "AIRFLOW_CONN_ALERTS_WEBHOOK": webhook.url,
            "AIRFLOW__API__BASE_URL": BASE,
        }
        with pytest.raises(SystemExit, match="failed"):
            run_dag(DAY, env)
        payloads = webhook.json_bodies()

    texts = [p["text"] for p in payloads]
    titles = [t.split(" (")[0] for t in texts]
    assert titles == [
        "[WARNING] Extract read the primary: replica unusable",
        "[CRITICAL] Task failed: nightly_sales.extract_source_db",
        "[CRITICAL] DAG run failed: nightly_sales",
    ], texts
    fallback, task_failed, dag_failed = texts
    assert "rule replica_fallback: source_db_replica lag inf" in fallback
    assert "unreachable" in fallback and "replica-pw-4711" not in json.dumps(payloads)
    assert "source table 'users' does not exist" in task_failed
    # one run, one link: <base>/dags/nightly_sales/runs/<run id, percent-encoded>
    links = {re.search(r"<(http[^>]+)>$", t).group(1) for t in texts}  # type: ignore[union-attr]
    [link] = links
    prefix = f"{BASE}/dags/nightly_sales/runs/"
    assert link.startswith(prefix), link
    encoded = link[len(prefix) :]
    run_id = unquote(encoded)  # Airflow's id of the run: manual__<when it was triggered>
    assert re.fullmatch(r"manual__[0-9T:.+-]+", run_id), run_id
    assert encoded == quote(run_id, safe="") and ":" not in encoded and "+" not in encoded
    assert f"run {run_id}" in dag_failed and f"run {run_id}" in task_failed
    for payload in payloads:
        assert any(f"<{link}|Open the run in Airflow>" in json.dumps(b) for b in payload["blocks"])
    # the fallback is recorded for for_runs streaks under the run's business day
    record = json.loads((tmp_path / "data" / "runs" / DAY.isoformat() / "alerts.json").read_text())
    assert record["rules"]["replica_fallback"] == ["replica_fallback"]
    assert record["rules"]["quality"] == []  # the failure path evaluated the rules: quiet
