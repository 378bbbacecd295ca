"""The nightly's source freshness gate, through pipeline/nightly.py on a real PostgreSQL
source and a DuckDB warehouse (no mocks).

Night 1 publishes. Night 2 runs three days later on the run's clock (NIGHTSHIFT_NOW
moves it): every raw table's newest `_loaded_at` is then past `error_after`, so the run
stops before publish, naming the table, its age and the way on, and records the failed
gate in the published `ops.quality_results`. Rerun with `ACCEPT_STALE_SOURCES=*` (a
quiet holiday), it publishes, and the published run metrics and alert rules say so.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from alerting.rules import Thresholds, evaluate
from demo.generator import generate
from demo.run import running_api
from pipeline import nightly
from quality.validate import QualityGateError
from warehouse.publish import last_published_day

DAY = date(2026, 11, 20)


@pytest.fixture
def pg_nightly(pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    payments = tmp_path / "payments.db"
    generate(pg_database, seed=5, days=5, end_date=DAY, orders_per_day=10, payments_db=payments)
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB", pg_database)
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    monkeypatch.setenv("REPORT_TZ", "UTC")
    monkeypatch.delenv("WAREHOUSE_PATH", raising=False)
    monkeypatch.delenv("NIGHTSHIFT_NOW", raising=False)
    monkeypatch.delenv("ACCEPT_STALE_SOURCES", raising=False)
    with running_api(payments, token="t0ken") as api_uri:
        monkeypatch.setenv("AIRFLOW_CONN_PAYMENTS_API", api_uri)
        yield tmp_path / "data" / "warehouse.duckdb"


def _freshness_rows(warehouse: Path, run_id: str) -> dict[str, tuple[str, bool]]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(
            "select details, severity, success from ops.quality_results "
            "where run_id = ? and suite = 'source_freshness'",
            [run_id],
        ).fetchall()
    return {json.loads(d)["table"]: (severity, success) for d, severity, success in rows}


def test_a_stale_source_stops_the_night_until_it_is_accepted(
    pg_nightly: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = pg_nightly
    nightly.run_all(DAY)
    night1 = _freshness_rows(warehouse, DAY.isoformat())
    assert set(night1) == {"raw.orders", "raw.order_items", "raw.payments", "raw.fx_rates"}
    assert all(success for _, success in night1.values()), night1

    day2 = DAY + timedelta(days=1)
    monkeypatch.setenv("NIGHTSHIFT_NOW", "+3d")  # the run's clock, three days on
    with pytest.raises(QualityGateError) as stopped:
        nightly.run_all(day2)
    message = str(stopped.value)
    assert "suite source_freshness" in message and "raw.orders" in message
    assert "72." in message and "error after 50.0 h" in message
    assert "ACCEPT_STALE_SOURCES=orders" in message
    assert last_published_day(warehouse) == DAY  # nothing published
    failed = _freshness_rows(warehouse, day2.isoformat())  # the gate, where it outlives the build
    assert failed["raw.orders"] == ("critical", False)

    monkeypatch.setenv("ACCEPT_STALE_SOURCES", "*")  # the on-call: the source was quiet
    nightly.run_all(day2)
    assert last_published_day(warehouse) == day2
    assert _freshness_rows(warehouse, day2.isoformat())["raw.orders"] == ("warning", False)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        metrics = json.loads(
            con.execute(
                "select cast(metrics as varchar) from ops.pipeline_runs where run_id = ?",
                [day2.isoformat()],
            ).fetchone()[0]
        )
    orders = metrics["source_freshness"]["raw.orders"]
    assert orders["status"] == "error" and orders["accepted"] and orders["age_h"] >= 72
    fired = [
        a for a in evaluate(metrics, [], Thresholds()) if a.fields.get("table") == "raw.orders"
    ]
    assert [(a.fields["rule"], a.severity) for a in fired] == [("freshness", "critical")]
    assert "ACCEPT_STALE_SOURCES accepted it" in fired[0].text
