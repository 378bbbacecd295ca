"""The pipeline's bookkeeping on both warehouse backends: a DuckDB file and PostgreSQL.

Quality results stored in a build and read back once published, a failed gate's
results written into the published warehouse, run metrics collected and stored in a
build and read back as alert history, extract watermarks (window, newest cursor, shard
map, source id) after loads, and the last published day. Every test runs on both
engines against the same expected values, so both give the same answers.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from extract.watermark import (
    Watermark,
    last_loaded_shard_map,
    last_loaded_source_id,
    last_watermark,
)
from pipeline import run_metrics
from quality.results import record_failed_gate, store_results
from quality.validate import ExpectationOutcome, SuiteResult
from tests.warehouse.test_load import TZ, land, orders, ts, users
from warehouse.backends.duckdb import DuckDBWarehouse
from warehouse.backends.postgres import PostgresWarehouse
from warehouse.load import SourceLoadPlan, load_source_db
from warehouse.publish import last_published_day

DAY = date(2026, 11, 20)
NOW = datetime(2026, 11, 21, 4, tzinfo=UTC)


class Backend:
    """One engine. `where` is what callers pass today: the DuckDB file's path (as the
    nightly does), or the PostgreSQL `Warehouse`. `readers`: every accepted `where`."""

    def __init__(self, kind: str, tmp_path: Path, pg_url: str | None = None) -> None:
        self.kind = kind
        if kind == "duckdb":
            self.path = tmp_path / "wh" / "warehouse.duckdb"
            self.wh: Any = DuckDBWarehouse(self.path)
            self.where: Any = self.path
            self.readers: list[Any] = [self.path, self.wh]
        else:
            assert pg_url is not None
            self.wh = PostgresWarehouse(pg_url)
            self.where = self.wh
            self.readers = [self.wh]

    def rows(self, sql: str, params: list[Any] | None = None, build: Any = None) -> list[tuple]:
        table = self.wh.read_arrow(sql, params or [], build=build)
        return list(zip(*(c.to_pylist() for c in table.columns), strict=True))

    def published_tables(self, schema: str) -> set[str]:
        if self.kind == "duckdb" and not self.path.exists():
            return set()
        return {
            r[0]
            for r in self.rows(
                "select table_name from information_schema.tables where table_schema = ?",
                [schema],
            )
        }


@pytest.fixture(params=["duckdb", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    url = request.getfixturevalue("pg_database") if request.param == "postgres" else None
    return Backend(request.param, tmp_path, url)


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NIGHTSHIFT_NOW", NOW.isoformat())
    return tmp_path / "data"


def _results(run_id: str, suites: tuple[str, ...] = ("orders", "payments")) -> list[SuiteResult]:
    outcomes = {
        "orders": [
            ExpectationOutcome(
                suite="orders",
                table="orders",
                expectation="expect_column_values_to_not_be_null",
                column="id",
                severity="critical",
                success=True,
                unexpected_count=0,
                element_count=4,
                kwargs={"column": "id"},
            ),
            ExpectationOutcome(
                suite="orders",
                table="orders",
                expectation="expect_column_values_to_be_between",
                column="total",
                severity="critical",
                success=False,
                observed_value={"min": -5.0, "max": 12.5},
                unexpected_count=1,
                element_count=4,
                samples=[{"id": 7, "total": "-5.00"}],
                kwargs={"column": "total", "min_value": 0},
                details={"note": 'négatif, "quoted", 50%\nsecond line'},
            ),
            ExpectationOutcome(
                suite="orders",
                table="orders",
                expectation="expect_table_row_count_to_be_between",
                column=None,
                severity="warning",
                success=False,
                observed_value=4,
            ),
        ],
        "payments": [
            ExpectationOutcome(
                suite="payments",
                table="payments",
                expectation="expect_column_values_to_be_unique",
                column="id",
                severity="critical",
                success=True,
                observed_value="",
            )
        ],
    }
    return [
        SuiteResult(suite=s, table=s, run_id=run_id, outcomes=outcomes[s], rows=4) for s in suites
    ]


_QUALITY = (
    "select run_id, suite, expectation, column_name, severity, success, observed_value, "
    "details, checked_at from {ops}.quality_results "
    "order by run_id, suite, expectation"
)


def _quality_rows(backend: Backend) -> list[tuple]:
    """Published `ops.quality_results`, JSON columns parsed."""
    return [
        (*r[:6], None if r[6] is None else json.loads(r[6]), json.loads(r[7]), r[8])
        for r in backend.rows(_QUALITY)
    ]


def _expected_quality(run_id: str, suites: tuple[str, ...] = ("orders", "payments")) -> list:
    rows = []
    for result in _results(run_id, suites):
        for o in result.outcomes:
            details = {
                "table": o.table,
                "kwargs": o.kwargs,
                "unexpected_count": o.unexpected_count,
                "element_count": o.element_count,
                "samples": o.samples,
                **o.details,
            }
            rows.append(
                (
                    run_id,
                    o.suite,
                    o.expectation,
                    o.column,
                    o.severity,
                    o.success,
                    o.observed_value,
                    details,
                    NOW,
                )
            )
    return sorted(rows, key=lambda r: (r[0], r[1], r[2]))


def test_quality_results_stored_in_a_build_are_published(backend: Backend) -> None:
    wh = backend.wh
    build = wh.begin_build(DAY.isoformat())
    with wh.transaction(build) as s:
        assert store_results(s, DAY.isoformat(), _results(DAY.isoformat())) == 4
    with wh.transaction(build) as s:  # a rerun of one suite replaces only its rows
        assert store_results(s, DAY.isoformat(), _results(DAY.isoformat(), ("orders",))) == 3
        assert store_results(s, "2026-11-19", _results("2026-11-19", ("payments",))) == 1
    # only in the build until it is published
    assert "quality_results" not in backend.published_tables("ops")
    counted = backend.rows(
        "select count(*) from {ops}.quality_results where run_id = ?", [DAY.isoformat()], build
    )
    assert counted == [(4,)]
    wh.publish(build)
    assert _quality_rows(backend) == sorted(
        _expected_quality(DAY.isoformat()) + _expected_quality("2026-11-19", ("payments",)),
        key=lambda r: (r[0], r[1], r[2]),
    )


def test_a_failed_gate_is_recorded_in_the_published_warehouse(backend: Backend) -> None:
    wh = backend.wh
    failed = "2026-11-21"
    if backend.kind == "duckdb":  # no published file yet: nothing to record into
        assert record_failed_gate(backend.where, failed, _results(failed)) is False
        assert not backend.path.exists()
    build = wh.begin_build(DAY.isoformat())
    with wh.transaction(build) as s:
        s.execute("create table {analytics}.sales_summary (date date, region varchar)")
        s.execute(
            "insert into {analytics}.sales_summary values (?, 'EU'), (?, 'US')",
            [date(2026, 11, 19), DAY],
        )
        store_results(s, DAY.isoformat(), _results(DAY.isoformat(), ("payments",)))
    wh.publish(build)
    summary = backend.rows("select date, region from {analytics}.sales_summary order by 1, 2")
    # the failing run's build is abandoned; its results go into the published warehouse
    doomed = wh.begin_build(failed)
    wh.abandon_build(doomed)
    for _ in range(2):  # the rerun of the failing task replaces its rows
        assert record_failed_gate(backend.where, failed, _results(failed)) is True
    assert _quality_rows(backend) == _expected_quality(DAY.isoformat(), ("payments",)) + (
        _expected_quality(failed)
    )
    assert backend.rows("select date, region from {analytics}.sales_summary order by 1, 2") == (
        summary
    )
    if backend.kind == "duckdb":  # also through the Warehouse object
        assert record_failed_gate(wh, failed, _results(failed, ("orders",))) is True
        assert len(_quality_rows(backend)) == 5


def test_postgres_failed_gate_creates_the_published_table(pg_database: str) -> None:
    """A server warehouse with nothing published yet: the table is created (DuckDB
    returns False instead: there is no file to copy)."""
    wh = PostgresWarehouse(pg_database)
    assert record_failed_gate(wh, "2026-11-21", _results("2026-11-21", ("orders",))) is True
    rows = wh.read_arrow("select count(*) as n from {ops}.quality_results").to_pylist()
    assert rows == [{"n": 3}]


def test_run_metrics_collect_store_and_history(
    backend: Backend, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh = backend.wh
    for where in backend.readers:
        assert run_metrics.history(where, DAY.isoformat()) == []  # nothing published

    @run_metrics.timed
    def extract(business_date: date) -> dict:
        return {"orders": 10}

    # the second night's extract read a replica whose lag could not be measured
    folder = data_dir / "landing" / "source_db" / "orders" / "run=2026-11-19"
    folder.mkdir(parents=True)
    (folder / "_manifest.json").write_text(
        json.dumps({"rows": 1, "read_from": "primary", "replica_lag_seconds": None})
    )
    stats = {
        "extracted": {"orders": 10},
        "quarantined": {"payments": 1},
        "loaded": {"orders": 9},
        "published": {"sales_summary": 4},
        "restated_days": 2,
    }
    stored = {}
    for n, day in enumerate((date(2026, 11, 18), date(2026, 11, 19), DAY, DAY)):  # a rerun
        now = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1, hours=4)
        monkeypatch.setenv("NIGHTSHIFT_NOW", now.isoformat())
        extract(day)
        build = wh.begin_build(day.isoformat())
        with wh.transaction(build) as s:
            s.execute("create table if not exists {raw}.orders (id bigint, updated_at timestamptz)")
            s.execute(
                "insert into {raw}.orders values (?, ?)",
                [n, datetime(day.year, day.month, day.day, 22, tzinfo=UTC)],
            )
            store_results(s, day.isoformat(), _results(day.isoformat()))
            metrics = run_metrics.collect(s, day, stats)
            run_metrics.store(s, metrics)
        stored[day] = metrics
        wh.publish(build)

    assert stored[DAY]["quality"] == {
        "checks": 4,
        "pass_rate": 0.5,
        "critical_failures": 1,
        "warnings": 1,
    }
    assert stored[DAY]["freshness_lag_s"] == 6 * 3600.0
    runs = backend.rows(
        "select run_id, business_date, quality_checks, quality_pass_rate, restated_days, "
        "freshness_lag_s, started_at is not null, duration_s >= 0 "
        "from {ops}.pipeline_runs order by run_id"
    )
    assert runs == [
        (d, date.fromisoformat(d), 4, 0.5, 2, 21600.0, True, True)
        for d in ("2026-11-18", "2026-11-19", "2026-11-20")
    ]
    tasks = backend.rows(
        "select run_id, task, status, summary, started_at < finished_at, seconds >= 0 "
        "from {ops}.task_metrics order by run_id"
    )
    assert [(*t[:3], json.loads(t[3]), *t[4:]) for t in tasks] == [
        (d, "extract", "success", {"orders": 10}, True, True)
        for d in ("2026-11-18", "2026-11-19", "2026-11-20")
    ]
    for where in backend.readers:
        history = run_metrics.history(where, DAY.isoformat())
        # the first run ever is not history; the run itself neither
        assert [h["run_id"] for h in history] == ["2026-11-19"]
        assert history[0]["replica_lag_s"] == float("inf")  # Infinity survives the trip
        assert history[0]["rows_extracted"] == {"orders": 10}
        assert history[0]["quarantined"] == {"payments": 1}
        assert history[0]["quality"]["critical_failures"] == 1
        assert history[0]["freshness_lag_s"] == 21600.0
        assert [h["run_id"] for h in run_metrics.history(where, "2026-11-22")] == [
            "2026-11-19",
            "2026-11-20",
        ]
        assert last_published_day(where) == DAY


def test_watermarks_after_loads(backend: Backend, tmp_path: Path) -> None:
    wh, landing = backend.wh, tmp_path / "landing"
    for where in [*backend.readers, None]:
        assert last_watermark(where, "source_db", "orders") is None
        assert last_loaded_shard_map(where, "source_db", "orders", "") is None
        assert last_loaded_source_id(where, "source_db", "orders") is None

    first = {"window_end": ts(20).isoformat(), "source_id": "db-a", "shard_map": {"version": 1}}
    land(landing, "source_db", "users", "r1", users([(1, "EU", ts(1))]), **first)
    land(
        landing,
        "source_db",
        "orders",
        "r1",
        orders([(100, 1, "paid", "10.00", ts(5), ts(8)), (101, 1, "paid", "2.50", ts(5), ts(7))]),
        **first,
    )
    build = wh.begin_build("r1")
    load_source_db(
        landing, SourceLoadPlan("r1", TZ, ("users", "orders"), warehouse=wh, build=build)
    )
    for where in backend.readers:  # loaded in the build only
        assert last_watermark(where, "source_db", "orders") is None
    wh.publish(build)
    for where in backend.readers:
        assert last_watermark(where, "source_db", "orders") == Watermark(
            "source_db", "orders", "", "r1", ts(20), "updated_at", ts(8), NOW
        )  # extracted_at: the pinned clock when it was landed
        assert last_loaded_shard_map(where, "source_db", "orders", "") == {"version": 1}
        assert last_loaded_source_id(where, "source_db", "orders") == "db-a"

    # the next run: a later window, older cursors than the first run's, a new map, a
    # new source database; no map for users
    second = {"window_end": ts(21).isoformat(), "source_id": "db-b"}
    shards = {"version": 2, "shards": [{"name": "s0", "vshards": [[0, 1]]}]}
    late = orders([(102, 1, "paid", "1.00", ts(6), ts(6))])
    land(landing, "source_db", "orders", "r2", late, **second, shard_map=shards)
    land(landing, "source_db", "users", "r2", users([(2, "US", ts(2))]), **second)
    build = wh.begin_build("r2")
    load_source_db(
        landing, SourceLoadPlan("r2", TZ, ("users", "orders"), warehouse=wh, build=build)
    )
    wh.publish(build)
    answers = [
        (
            last_watermark(where, "source_db", "orders"),
            last_watermark(where, "source_db", "users"),
            last_watermark(where, "source_db", "orders", "s0"),
            last_loaded_shard_map(where, "source_db", "orders", ""),
            last_loaded_shard_map(where, "source_db", "users", ""),
            last_loaded_shard_map(where, "source_db", "orders", "s0"),
            last_loaded_source_id(where, "source_db", "orders"),
            last_loaded_source_id(where, "payments_api", "payments"),
        )
        for where in backend.readers
    ]
    assert answers[0] == (
        # the newest window; the newest cursor ever loaded (the first run's)
        Watermark("source_db", "orders", "", "r2", ts(21), "updated_at", ts(8), NOW),
        Watermark("source_db", "users", "", "r2", ts(21), "updated_at", ts(2), NOW),
        None,
        shards,
        None,
        None,
        "db-b",
        None,
    )
    assert all(a == answers[0] for a in answers)
    mark = answers[0][0]
    assert mark.window_end.utcoffset() == timedelta(0) and mark.max_cursor.tzinfo is not None


def test_last_published_day(backend: Backend) -> None:
    wh = backend.wh
    for where in backend.readers:
        assert last_published_day(where) is None
    build = wh.begin_build("d1")
    with wh.transaction(build) as s:
        s.execute("create table {analytics}.sales_summary (date date, region varchar)")
        s.execute(
            "insert into {analytics}.sales_summary values (?, 'EU'), (?, 'US')",
            [date(2026, 11, 18), date(2026, 11, 19)],
        )
    for where in backend.readers:
        assert last_published_day(where) is None  # only in the build
    assert last_published_day(wh, build) == date(2026, 11, 19)
    if backend.kind == "duckdb":
        assert last_published_day(build.path) == date(2026, 11, 19)  # a build file
    wh.publish(build)
    for where in backend.readers:
        assert last_published_day(where) == date(2026, 11, 19)

    # a recorded run's day counts, and so does a later day in daily_sales
    build = wh.begin_build("d2")
    with wh.transaction(build) as s:
        run_metrics.store(s, run_metrics.collect(s, DAY, {}))
        s.execute("create table {analytics}.daily_sales (date date, total double precision)")
        s.execute("insert into {analytics}.daily_sales values (?, 1.5)", [date(2026, 11, 17)])
    assert last_published_day(wh, build) == DAY
    wh.publish(build)
    for where in backend.readers:
        assert last_published_day(where) == DAY
    build = wh.begin_build("d3")
    with wh.transaction(build) as s:
        s.execute("insert into {analytics}.daily_sales values (?, 2.5)", [date(2026, 11, 23)])
    wh.publish(build)
    for where in backend.readers:
        assert last_published_day(where) == date(2026, 11, 23)
