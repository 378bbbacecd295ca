"""`make rollback` (warehouse/rollback.py): publish a kept warehouse version again.

Pins, on real DuckDB files published by three nights: which version is restored (the one
before the current, or a named run), the rollback row it records, that kept versions are
never written, the errors for unknown/current runs, readers seeing old or new, that run
history leaves rollbacks out, and the CLI (`--list`, `--to`, report pages rebuilt).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from core import ops
from pipeline import run_metrics
from warehouse.publish import begin_build, last_published_day, list_versions, publish_build
from warehouse.rollback import RollbackError, choose_version, main, rollback

RUNS = ["2026-11-18", "2026-11-19", "2026-11-20"]
Row = tuple[date, str, Decimal, int]


def _rows(run: int) -> list[Row]:
    """analytics.sales_summary as published by run number `run` (1-based)."""
    return [
        (date.fromisoformat(day), region, Decimal(f"{100 * (i + 1) + j}.50"), 10 * i + j)
        for i, day in enumerate(RUNS[:run])
        for j, region in enumerate(["AMER", "EMEA"])
    ]


def _night(warehouse: Path, run_id: str, day: str, mp: pytest.MonkeyPatch) -> None:
    """One nightly run: a build copy, one more day of rows, its ops row, publish."""
    build = begin_build(warehouse, run_id)
    con = duckdb.connect(str(build))
    con.execute("create schema if not exists analytics")
    con.execute(
        "create table if not exists analytics.sales_summary (date date, region varchar, "
        "total_sales_usd decimal(18,2), order_count bigint)"
    )
    rows = [r for r in _rows(RUNS.index(day) + 1) if str(r[0]) == day]
    con.execute("delete from analytics.sales_summary where date = ?", [day])
    con.executemany("insert into analytics.sales_summary values (?, ?, ?, ?)", rows)
    con.execute(
        "create or replace table analytics.daily_sales as select date, region, "
        "'all' as category, total_sales_usd, order_count from analytics.sales_summary"
    )
    con.execute(ops.create_sql("pipeline_runs", "task_metrics", schema=ops.SCHEMA))
    con.execute(
        "insert into ops.pipeline_runs (run_id, business_date, published_at, metrics) "
        "values (?, ?, ?, ?)",
        [run_id, day, f"{day} 03:00:00+00", json.dumps({"run_id": run_id})],
    )
    con.close()
    mp.setenv("NIGHTSHIFT_NOW", f"{day}T03:00:00Z")  # version stamps follow the nights
    publish_build(build, warehouse, version=run_id)


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "warehouse.duckdb"
    for run in RUNS:
        _night(path, run, run, monkeypatch)
    monkeypatch.setenv("NIGHTSHIFT_NOW", "2026-11-21T09:00:00Z")  # the on-call's rollback
    return path


def _sales(path: Path) -> list[Row]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("select * from analytics.sales_summary order by 1, 2").fetchall()
    finally:
        con.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rollback_restores_the_version_before_the_current(warehouse: Path) -> None:
    assert _sales(warehouse) == _rows(3)
    result = rollback(warehouse)

    assert result["restored_run_id"] == RUNS[1]
    assert _sales(warehouse) == _rows(2)
    assert last_published_day(warehouse) == date(2026, 11, 19)
    con = duckdb.connect(str(warehouse), read_only=True)
    recorded = con.execute(
        "select run_id, business_date, metrics from ops.pipeline_runs "
        "where run_id like 'rollback-%'"
    ).fetchall()
    con.close()
    assert len(recorded) == 1 and recorded[0][0] == result["run_id"] == "rollback-20261121T090000Z"
    assert recorded[0][1] == date(2026, 11, 19)
    assert json.loads(recorded[0][2])["restored_run_id"] == RUNS[1]
    # The rollback itself was kept as the newest version, and it is the published file.
    versions = list_versions(warehouse)
    assert [run for run, _ in versions] == [*RUNS, result["run_id"]]
    assert versions[-1][1].samefile(warehouse)


def test_rollback_to_a_run_never_writes_the_kept_versions(warehouse: Path) -> None:
    before = {p: _sha(p) for _, p in list_versions(warehouse)}
    assert choose_version(warehouse, RUNS[0])[0] == RUNS[0]

    result = rollback(warehouse, RUNS[0])

    assert result["restored_run_id"] == RUNS[0] and result["last_day"] == RUNS[0]
    assert _sales(warehouse) == _rows(1)
    assert {p: _sha(p) for p in before} == before
    assert len(list_versions(warehouse)) == 4


def test_unknown_or_current_run_is_refused(warehouse: Path) -> None:
    with pytest.raises(RollbackError, match="no kept version of run 'nope'") as caught:
        rollback(warehouse, "nope")
    assert ", ".join(RUNS) in str(caught.value)  # the kept runs, oldest first
    with pytest.raises(RollbackError, match="published now: nothing to do"):
        rollback(warehouse, RUNS[2])
    assert _sales(warehouse) == _rows(3)  # untouched


def test_open_reader_keeps_old_rows_new_reader_sees_restored(warehouse: Path) -> None:
    # Another process, as an analyst's session (DuckDB shares instances per process).
    code = f"""
        import sys, duckdb
        con = duckdb.connect({str(warehouse)!r}, read_only=True)
        count = "select count(*) from analytics.sales_summary"
        print(con.execute(count).fetchone()[0], flush=True)
        sys.stdin.readline()
        print(con.execute(count).fetchone()[0], flush=True)
    """
    reader = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None and reader.stdin is not None
    try:
        assert reader.stdout.readline().strip() == "6"
        rollback(warehouse, RUNS[0])
        reader.stdin.write("go\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "6"  # old file, whole
    finally:
        reader.communicate(timeout=30)
    assert reader.returncode == 0
    assert _sales(warehouse) == _rows(1)  # a new connection: the restored file


def test_history_leaves_rollbacks_out(warehouse: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rollback(warehouse)  # back to run 2, then the night of 2026-11-20 runs again
    _night(warehouse, "2026-11-20-rerun", RUNS[2], monkeypatch)

    history = run_metrics.history(warehouse, "x")
    # The first run is left out as ever; the rollback row is no night.
    assert [m["run_id"] for m in history] == [RUNS[1], "2026-11-20-rerun"]
    assert _sales(warehouse) == _rows(3)


def test_main_lists_versions_and_refuses_unknown(
    warehouse: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WAREHOUSE_PATH", str(warehouse))
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[2:].split()[0] for line in lines] == RUNS
    assert [line[0] for line in lines] == [" ", " ", "*"]  # run 3 is published

    assert main(["--to", "nope"]) == 2
    assert "kept, oldest first" in capsys.readouterr().err
    assert _sales(warehouse) == _rows(3)


def test_main_rebuilds_the_report_to_match(
    warehouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "report"
    report.mkdir()
    for day in ("2026-11-19", "2026-11-20"):
        (report / f"{day}.html").write_text("old page")
        (report / f"{day}.json").write_text("{}")
    monkeypatch.setenv("WAREHOUSE_PATH", str(warehouse))
    monkeypatch.setenv("REPORT_DIR", str(report))

    assert main([]) == 0  # back to run 2: 2026-11-20 is no longer published

    assert not list(report.glob("2026-11-20*"))
    page = (report / "2026-11-19.html").read_text()
    total = sum(r[2] for r in _rows(2) if r[0] == date(2026, 11, 19))
    assert "Daily sales &mdash; 2026-11-19" in page and f"{total:,.2f}" in page
    assert (report / "2026-11-19.csv").read_text().count("2026-11-19") == 2
    assert (report / "2026-11-19-trend.png").exists()
    index = (report / "index.html").read_text()
    assert 'href="2026-11-19.html"' in index and "2026-11-20" not in index


def test_rerun_under_a_pinned_clock_never_rewrites_a_kept_version(
    warehouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Night 3 again at the same pinned instant: same version name as its first publish.
    held = tmp_path / "held.duckdb"  # the first publish's file, as a reader still holds it
    held.hardlink_to(list_versions(warehouse)[-1][1])
    before = _sha(held)
    _night(warehouse, RUNS[2], RUNS[2], monkeypatch)

    assert _sha(held) == before
    versions = list_versions(warehouse)
    assert [run for run, _ in versions] == RUNS and versions[-1][1].samefile(warehouse)
    assert choose_version(warehouse, None)[0] == RUNS[1]


def test_after_a_failed_gate_the_previous_night_is_still_the_one_before(warehouse: Path) -> None:
    # A failed gate re-publishes the file with its results added (no new version): the
    # published file is then no kept version's inode, yet it is still night 3's state.
    build = begin_build(warehouse, "gate")
    con = duckdb.connect(str(build))
    con.execute("create table ops.quality_results (run_id varchar)")
    con.close()
    publish_build(build, warehouse)
    assert not any(p.samefile(warehouse) for _, p in list_versions(warehouse))

    assert rollback(warehouse)["restored_run_id"] == RUNS[1]
    assert _sales(warehouse) == _rows(2)


def test_rollback_on_a_server_warehouse_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Kept versions are DuckDB files: with a PostgreSQL warehouse configured, `make
    rollback` says so (no password shown) instead of restoring a DuckDB file nobody reads."""
    from warehouse.rollback import main

    monkeypatch.setenv("WAREHOUSE_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.delenv("DBT_TARGET", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", "postgresql://etl:s3cret@127.0.0.1:9/wh")
    assert main(["--list"]) == 2
    err = capsys.readouterr().err
    assert "postgres warehouse" in err and "keeps none" in err
    assert "s3cret" not in err
    assert not (tmp_path / "warehouse.duckdb").exists()
