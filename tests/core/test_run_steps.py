"""A run's step records, its replica lag and the published history (core/run_steps.py):
what the publish step gathers and what the alert rules of a failed run read."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from core import run_steps
from warehouse.backends import as_warehouse

RUN = "2026-11-20"
T0 = datetime(2026, 11, 21, 2, 0, tzinfo=UTC).timestamp()


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("NIGHTSHIFT_DATA_URL", raising=False)
    return tmp_path / "data"


def test_records_are_one_file_per_step_read_back_in_start_order(data_dir: Path) -> None:
    run_steps.record(RUN, "load", T0 + 60, T0 + 61.2345, {"status": "failed", "error": "x"})
    run_steps.record(RUN, "extract", T0, T0 + 59, {"status": "success", "summary": {"o": 3}})
    run_steps.record("2026-11-19", "extract", T0 - 86400, T0 - 86399, {"status": "success"})
    files = sorted(p.name for p in (data_dir / "runs" / RUN / "steps").iterdir())
    assert files == ["extract.json", "load.json"]
    steps = run_steps.read_steps(RUN)
    assert [s["task"] for s in steps] == ["extract", "load"]
    assert steps[0] == {
        "task": "extract",
        "started_at": "2026-11-21T02:00:00+00:00",
        "finished_at": "2026-11-21T02:00:59+00:00",
        "seconds": 59.0,
        "status": "success",
        "summary": {"o": 3},
    }
    assert steps[1]["seconds"] == 1.234 and steps[1]["error"] == "x"
    # a rerun of a step replaces its record
    run_steps.record(RUN, "load", T0 + 120, T0 + 121, {"status": "success"})
    assert [s["status"] for s in run_steps.read_steps(RUN)] == ["success", "success"]
    assert run_steps.read_steps("2026-11-18") == []


def test_a_record_that_cannot_be_written_is_logged_not_raised(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "runs").write_text("not a folder")
    with caplog.at_level(logging.ERROR, logger="core.run_steps"):
        run_steps.record(RUN, "extract", T0, T0 + 1, {"status": "success"})
    assert "could not record the metrics of step extract" in caplog.text


def _manifest(data_dir: Path, table: str, run: str, **fields: object) -> None:
    folder = data_dir / "landing" / "source_db" / table / f"run={run}"
    folder.mkdir(parents=True)
    (folder / "_manifest.json").write_text(json.dumps({"rows": 1, **fields}))


def test_replica_lag_is_the_worst_of_the_runs_tables_and_shards(data_dir: Path) -> None:
    assert run_steps.replica_lag(RUN) is None
    _manifest(data_dir, "users", RUN)  # no replica configured
    assert run_steps.replica_lag(RUN) is None
    _manifest(data_dir, "orders", RUN, read_from="replica", replica_lag_seconds=12.5)
    _manifest(data_dir, "orders", f"{RUN}.shard-b", read_from="primary", replica_lag_seconds=950)
    _manifest(data_dir, "orders", "2026-11-19", read_from="primary", replica_lag_seconds=5000)
    assert run_steps.replica_lag(RUN) == 950
    _manifest(data_dir, "products", RUN, read_from="primary", replica_lag_seconds=None)
    assert run_steps.replica_lag(RUN) == float("inf")


def test_history_reads_earlier_published_runs_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    assert run_steps.history(as_warehouse(path), RUN) == []
    assert not path.exists()  # reading the history never creates the warehouse
    con = duckdb.connect(str(path))
    con.execute("create schema ops")
    con.close()
    assert run_steps.history(as_warehouse(path), RUN) == []  # no pipeline_runs yet
    con = duckdb.connect(str(path))
    con.execute(
        "create table ops.pipeline_runs (run_id varchar, business_date date, "
        "published_at timestamptz, metrics json)"
    )
    rows = [
        ("2026-11-16", "2026-11-16", "2026-11-17 03:00+00"),  # the first run ever
        ("2026-11-17", "2026-11-17", "2026-11-18 03:00+00"),
        ("rollback-1", "2026-11-17", "2026-11-18 05:00+00"),
        ("2026-11-18", "2026-11-18", "2026-11-19 03:00+00"),
        ("2026-11-19", "2026-11-19", "2026-11-20 03:00+00"),
        (RUN, RUN, "2026-11-21 03:00+00"),
    ]
    for run_id, day, published in rows:
        metrics = json.dumps({"run_id": run_id, "rows_extracted": {"orders": len(run_id)}})
        con.execute(
            "insert into ops.pipeline_runs values (?, cast(? as date), cast(? as timestamptz), ?)",
            [run_id, day, published, metrics],
        )
    con.close()
    history = run_steps.history(as_warehouse(path), RUN)
    assert [h["run_id"] for h in history] == ["2026-11-17", "2026-11-18", "2026-11-19"]
    assert history[0]["rows_extracted"] == {"orders": 10}
    limited = run_steps.history(as_warehouse(path), RUN, limit=2)
    assert [h["run_id"] for h in limited] == ["2026-11-18", "2026-11-19"]
