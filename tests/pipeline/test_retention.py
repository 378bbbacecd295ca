"""Retention (pipeline/retention.py): which files of which days a successful night prunes.

Pins, on a real data dir of 90 nights and real DuckDB warehouse versions: the per-kind
day windows counted back from the horizon, what is never pruned (FX cache, newest landed
run of a table, the running night's files, the published warehouse), that 0 keeps
everything, the rebuilt report index, and how `RetentionPolicy.load` reads its YAML.
"""

from __future__ import annotations

import json
import os
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest
import yaml

from core import settings
from pipeline.retention import RetentionPolicy, prune
from warehouse.publish import list_versions, publish_build

HORIZON = date(2026, 11, 20)
NIGHTS = [HORIZON - timedelta(days=i) for i in range(89, -1, -1)]  # 2026-08-23 .. 2026-11-20
POLICY = RetentionPolicy(
    landing_runs_days=30,
    quarantine_days=60,
    run_folders_days=30,
    failed_builds_days=7,
    report_pages_days=45,
    warehouse_versions=3,
)


def _since(first: date) -> set[str]:
    return {d.isoformat() for d in NIGHTS if d >= first}


def _land(data: Path, table: str, day: date) -> None:
    run = data / "landing" / "source_db" / table / f"run={day}"
    run.mkdir(parents=True)
    manifest = {"run_id": str(day), "extracted_at": f"{day}T02:00:00+00:00", "columns": ["id"]}
    (run / "_manifest.json").write_text(json.dumps(manifest))
    (run / "part-0.parquet").write_bytes(b"PAR1")


def _fill(data: Path, days: list[date], *, failed_builds: int = 10) -> None:
    """Every kind of file the nightly run writes, one set per day."""
    for day in days:
        _land(data, "orders", day)
        totals = data / "landing" / "source_db" / "_source_totals"
        totals.mkdir(parents=True, exist_ok=True)
        (totals / f"run={day}.json").write_text("{}")
        fx = data / "landing" / "payments_api" / "fx_rates" / "_cache" / "ab12cd"
        fx.mkdir(parents=True, exist_ok=True)
        (fx / f"{day}.json").write_text('{"EUR": 1.1}')
        quarantine = data / "quarantine" / "payments_api" / "payments"
        quarantine.mkdir(parents=True, exist_ok=True)
        (quarantine / f"run={day}.jsonl").write_text("{}\n")
        steps = data / "runs" / str(day) / "steps"
        steps.mkdir(parents=True)
        (steps / "x.json").write_text("{}")
        report = data / "report"
        report.mkdir(exist_ok=True)
        for suffix in (".html", ".csv", ".json", "-trend.png"):
            (report / f"{day}{suffix}").write_text("page")
    (data / "report" / "index.html").write_text("stale index")
    for day in days[-failed_builds:]:
        (data / f"warehouse.duckdb.{day}.build").write_bytes(b"half a build")


def _publish(warehouse: Path, days: list[date], monkeypatch: pytest.MonkeyPatch) -> None:
    """One real published DuckDB file per day, each kept as a version."""
    for i, day in enumerate(days):
        build = warehouse.with_name(f"warehouse.duckdb.v{i}.build")
        con = duckdb.connect(str(build))
        con.execute("create table night as select ?::date as day", [day])
        con.close()
        monkeypatch.setenv("NIGHTSHIFT_NOW", f"{day}T03:00:00Z")  # version stamps follow days
        publish_build(build, warehouse, version=str(day))


def _days(folder: Path, pattern: str) -> set[str]:
    """The days named by the entries of `folder` matching `pattern`."""
    return {p.name.split("run=")[-1][:10] for p in folder.glob(pattern)}


def _files(data: Path) -> set[str]:
    return {str(p.relative_to(data)) for p in data.rglob("*")}


def test_prune_keeps_each_kinds_window_of_90_nights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, warehouse = tmp_path / "data", tmp_path / "data" / "warehouse.duckdb"
    _fill(data, NIGHTS)
    for day in (date(2026, 9, 1), date(2026, 9, 2)):  # a table last landed long ago
        _land(data, "users", day)
    _publish(warehouse, NIGHTS[-10:], monkeypatch)

    removed = prune(data, warehouse, POLICY, horizon=HORIZON, run_id="2026-11-20")

    source_db = data / "landing" / "source_db"
    landing_window = _since(date(2026, 10, 22))  # 30 days up to the horizon
    assert _days(source_db / "orders", "run=*") == landing_window
    assert _days(source_db / "_source_totals", "run=*.json") == landing_window
    # The newest landed run of a table stays (drift check), even far before the cutoff.
    assert _days(source_db / "users", "run=*") == {"2026-09-02"}
    # The FX cache is never pruned.
    fx = data / "landing" / "payments_api" / "fx_rates" / "_cache" / "ab12cd"
    assert len(list(fx.glob("*.json"))) == 90
    quarantine = data / "quarantine" / "payments_api" / "payments"
    assert _days(quarantine, "run=*.jsonl") == _since(date(2026, 9, 22))
    assert {p.name for p in (data / "runs").iterdir()} == landing_window
    assert all((data / "runs" / d / "steps" / "x.json").exists() for d in landing_window)
    report = data / "report"
    pages = _since(date(2026, 10, 7))  # 45 days
    for suffix in (".html", ".csv", ".json", "-trend.png"):
        assert {p.name.removesuffix(suffix)[:10] for p in report.glob(f"2026-*{suffix}")} == pages
    # The index was rebuilt from what is left.
    index = (report / "index.html").read_text()
    assert 'href="2026-10-07.html"' in index and 'href="2026-11-20.html"' in index
    assert "2026-10-06" not in index and "stale index" not in index
    builds = {p.name for p in data.glob("warehouse.duckdb.*.build")}
    assert builds == {f"warehouse.duckdb.{d}.build" for d in _since(date(2026, 11, 14))}
    # The newest 3 versions remain; the published file is intact and opens.
    assert [run for run, _ in list_versions(warehouse)] == [
        "2026-11-18",
        "2026-11-19",
        "2026-11-20",
    ]
    con = duckdb.connect(str(warehouse), read_only=True)
    assert con.execute("select day from night").fetchone()[0] == HORIZON
    con.close()
    assert len(removed["landing_runs"]) == 60 + 60 + 1  # orders, _source_totals, users
    assert len(removed["report_pages"]) == 45 * 4
    assert len(removed["warehouse_versions"]) == 7
    assert sorted(removed["failed_builds"]) == [
        f"warehouse.duckdb.2026-11-{d}.build" for d in (11, 12, 13)
    ]


def test_backfill_of_an_old_day_keeps_its_own_files(tmp_path: Path) -> None:
    data, warehouse = tmp_path / "data", tmp_path / "data" / "warehouse.duckdb"
    old = [date(2026, 8, 24), date(2026, 8, 25), date(2026, 8, 26)]
    _fill(data, [*old, HORIZON], failed_builds=4)

    prune(data, warehouse, POLICY, horizon=HORIZON, run_id="2026-08-25")

    # 2026-08-25 is the running night: all its files stay, its neighbours go.
    kept = {"2026-08-25", "2026-11-20"}
    assert _days(data / "landing" / "source_db" / "orders", "run=*") == kept
    assert _days(data / "landing" / "source_db" / "_source_totals", "run=*") == kept
    assert _days(data / "quarantine" / "payments_api" / "payments", "run=*") == kept
    assert {p.name for p in (data / "runs").iterdir()} == kept
    assert _days(data / "report", "2026-*.html") == kept
    assert (data / "report" / "2026-08-25-trend.png").exists()
    builds = {p.name for p in data.glob("warehouse.duckdb.*.build")}
    assert builds == {f"warehouse.duckdb.{d}.build" for d in kept}


def test_zero_keeps_everything_of_that_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, warehouse = tmp_path / "data", tmp_path / "data" / "warehouse.duckdb"
    _fill(data, NIGHTS)
    _publish(warehouse, NIGHTS[-4:], monkeypatch)
    before = _files(data)
    keep_all = RetentionPolicy(0, 0, 0, 0, 0, 0)

    assert prune(data, warehouse, keep_all, horizon=HORIZON, run_id="2026-11-20") == {}
    assert _files(data) == before
    assert (data / "report" / "index.html").read_text() == "stale index"  # not rebuilt

    # Zero for one kind only: that kind stays whole, the others are pruned.
    only_landing = RetentionPolicy(landing_runs_days=0, quarantine_days=60)
    removed = prune(data, warehouse, only_landing, horizon=HORIZON, run_id="2026-11-20")
    assert "landing_runs" not in removed and len(removed["quarantine"]) == 30
    assert len(list((data / "landing" / "source_db" / "orders").iterdir())) == 90


def test_what_a_killed_write_left_in_the_landing_goes_once_an_hour_old(tmp_path: Path) -> None:
    data, warehouse = tmp_path / "data", tmp_path / "data" / "warehouse.duckdb"
    _fill(data, NIGHTS[-2:])
    orders = data / "landing" / "source_db" / "orders"
    half_run = orders / ".tmp-run=2026-11-20-0a1b2c3d"  # a run folder killed mid-write
    half_run.mkdir()
    (half_run / "part-00000.parquet").write_bytes(b"PAR1 half")
    pointer = orders / ".tmp-_latest.json-4e5f6a7b"  # the pointer's temp file
    pointer.write_text("{")
    writing = orders / ".tmp-run=2026-11-21-89abcdef"  # a write going on now
    writing.mkdir()
    now = time.time()  # the process's clock (moved ahead under `make test-clock`)
    for path, stamp in ((half_run, now - 2 * 3600), (pointer, now - 2 * 3600), (writing, now)):
        os.utime(path, (stamp, stamp))

    removed = prune(data, warehouse, POLICY, horizon=HORIZON, run_id="2026-11-20")

    assert sorted(removed["stale_temp"]) == [
        "landing/source_db/orders/.tmp-_latest.json-4e5f6a7b",
        "landing/source_db/orders/.tmp-run=2026-11-20-0a1b2c3d",
    ]
    assert not half_run.exists() and not pointer.exists() and writing.is_dir()
    assert (orders / "run=2026-11-20" / "part-0.parquet").exists()


def test_policy_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = tmp_path / "unknown.yml"
    unknown.write_text("landing_runs_days: 30\nlanding_days: 10\n")
    with pytest.raises(ValueError, match="landing_days"):
        RetentionPolicy.load(unknown)
    for bad in ("-1", "true", "1.5", "thirty"):
        path = tmp_path / "bad.yml"
        path.write_text(f"quarantine_days: {bad}\n")
        with pytest.raises(ValueError, match="quarantine_days="):
            RetentionPolicy.load(path)
    partial = tmp_path / "partial.yml"
    partial.write_text("warehouse_versions: 2\n")
    assert RetentionPolicy.load(partial) == RetentionPolicy(warehouse_versions=2)
    # Missing file, no file, empty file: the defaults.
    assert RetentionPolicy.load(tmp_path / "missing.yml") == RetentionPolicy()
    assert RetentionPolicy.load(None) == RetentionPolicy()
    (tmp_path / "empty.yml").write_text("# nothing\n")
    assert RetentionPolicy.load(tmp_path / "empty.yml") == RetentionPolicy()
    # The shipped config loads and sets every knob.
    monkeypatch.delenv("RETENTION_CONFIG", raising=False)
    shipped = settings.retention_config_path()
    assert shipped.name == "retention.yml" and shipped.exists()
    policy = RetentionPolicy.load(shipped)
    assert set(yaml.safe_load(shipped.read_text())) == set(vars(policy))
    assert all(isinstance(v, int) and v >= 0 for v in vars(policy).values())
