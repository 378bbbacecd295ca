"""Run metrics: step timings, ops.pipeline_runs / ops.task_metrics, StatsD, alert history
(the step records' own format and readers: tests/core/test_run_steps.py)."""

from __future__ import annotations

import json
import socket
from datetime import date
from pathlib import Path

import duckdb
import pytest

from pipeline import run_metrics

DAY = date(2026, 11, 20)


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path))
    return tmp_path


def test_timed_records_success_and_failure() -> None:
    @run_metrics.timed
    def good(business_date: date) -> dict:
        return {"orders": 3}

    @run_metrics.timed
    def bad(business_date: date) -> dict:
        raise ValueError("orders.total: cannot convert 'abc'\nmore detail")

    assert good(DAY) == {"orders": 3}
    with pytest.raises(ValueError):
        bad(DAY)
    steps = {s["task"]: s for s in run_metrics.read_steps(DAY.isoformat())}
    assert steps["good"]["status"] == "success" and steps["good"]["summary"] == {"orders": 3}
    assert steps["bad"]["status"] == "failed"
    assert steps["bad"]["error"] == "orders.total: cannot convert 'abc'"
    assert steps["good"]["seconds"] >= 0


def test_metrics_are_stored_replaced_on_rerun_and_read_as_history(tmp_path: Path) -> None:
    @run_metrics.timed
    def extract(business_date: date) -> dict:
        return {"orders": 10}

    wh = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(wh))
    con.execute("create schema raw; create table raw.orders (updated_at timestamptz)")
    con.execute("insert into raw.orders values (now() - interval 2 hour)")
    con.execute(
        "create schema ops; create table ops.quality_results "
        "(run_id varchar, severity varchar, success boolean)"
    )
    con.execute(
        "insert into ops.quality_results values ('2026-11-19', 'critical', true), "
        "('2026-11-20', 'critical', true), ('2026-11-20', 'warning', false)"
    )
    stats = {"extracted": {"orders": 10}, "quarantined": {"payments": 1}, "restated_days": 2}
    for day in (date(2026, 11, 18), date(2026, 11, 19), DAY, DAY):  # first run, ..., a rerun
        extract(day)
        run_metrics.store(con, run_metrics.collect(con, day, stats))
    runs = con.execute(
        "select run_id, quality_checks, quality_pass_rate from ops.pipeline_runs order by 1"
    ).fetchall()
    assert runs == [("2026-11-18", 0, None), ("2026-11-19", 1, 1.0), ("2026-11-20", 2, 0.5)]
    lag = con.execute(
        "select freshness_lag_s from ops.pipeline_runs where run_id = '2026-11-20'"
    ).fetchone()[0]
    assert 7000 < lag < 7400
    tasks = con.execute("select run_id, task, status from ops.task_metrics order by 1").fetchall()
    assert tasks == [
        ("2026-11-18", "extract", "success"),
        ("2026-11-19", "extract", "success"),
        ("2026-11-20", "extract", "success"),
    ]
    con.close()
    history = run_metrics.history(wh, "2026-11-20")
    # the first run ever (a full extract) is not history for row-count comparisons
    assert [h["run_id"] for h in history] == ["2026-11-19"]
    assert history[0]["rows_extracted"] == {"orders": 10}


def test_statsd_gauges_reach_a_real_udp_receiver() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        port = receiver.getsockname()[1]
        metrics = {
            "rows_extracted": {"orders": 12},
            "quarantined": {"payments": 0},
            "rows_published": {"sales_summary": 4},
            "duration_s": 3.5,
            "quality": {"pass_rate": 1.0},
        }
        sent = run_metrics.emit_statsd(metrics, "127.0.0.1", port)
        lines = {receiver.recv(1024).decode() for _ in range(sent)}
    assert "nightshift.rows_extracted.orders:12|g" in lines
    assert "nightshift.duration_s:3.5|g" in lines
    assert "nightshift.quality.pass_rate:1.0|g" in lines
    assert run_metrics.emit_statsd(metrics, None) == 0
    assert json.dumps(metrics)  # the metrics stay JSON-able


def _manifest(data_dir: Path, table: str, run: str, **fields: object) -> None:
    folder = data_dir / "landing" / "source_db" / table / f"run={run}"
    folder.mkdir(parents=True)
    (folder / "_manifest.json").write_text(json.dumps({"rows": 1, **fields}))


def test_an_unmeasured_replica_lag_survives_publishing_to_the_alert_rule(data_dir: Path) -> None:
    """The run's replica lag (core/run_steps.py) in the collected metrics: unmeasurable
    is inf, and stays inf through the JSON of ops.pipeline_runs to the alert rule."""
    run = DAY.isoformat()
    _manifest(data_dir, "orders", run, read_from="replica", replica_lag_seconds=12.5)
    _manifest(data_dir, "products", run, read_from="primary", replica_lag_seconds=None)

    from alerting.rules import Thresholds, evaluate

    con = duckdb.connect(str(data_dir / "wh.duckdb"))
    run_metrics.store(con, run_metrics.collect(con, DAY, {}))
    stored = json.loads(
        con.execute("select metrics from ops.pipeline_runs where run_id = ?", [run]).fetchone()[0]
    )
    con.close()
    assert stored["replica_lag_s"] == float("inf")
    fired = [a for a in evaluate(stored, [], Thresholds()) if a.fields["rule"] == "replica_lag"]
    assert len(fired) == 1 and "inf s behind" in fired[0].text
