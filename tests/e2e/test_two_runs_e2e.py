"""Two runs at once, end to end: `make nightly` / `make backfill` (`pipeline.airflow_run`,
`airflow dags test`, which ignores pools and `max_active_runs`) started together on one
warehouse, against the demo sources (SQLite and the demo API on loopback).

The warehouse lease (warehouse/lease.py) lets one run at a time in: the other waits
(`WAREHOUSE_LEASE_WAIT_S`) or fails at once naming the holder; nothing published is
lost or torn. And through Airflow, the task wrapper's rule: a deterministic error fails
a task on its first try, a transient one is retried (pipeline/task_run.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from demo.generator import generate
from demo.run import running_api
from pipeline.airflow_run import airflow_bin, airflow_env, ensure_airflow_initialised

ROOT = Path(__file__).resolve().parents[2]
END = date(2026, 11, 20)
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@dataclass
class Demo:
    env: dict[str, str]
    data_dir: Path
    started: int = 0

    @property
    def warehouse(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        """`python -m pipeline.airflow_run …` (what `make nightly` / `make backfill` run);
        output to a file (a pipe nobody reads yet would block the run)."""
        self.started += 1
        log = self.data_dir.parent / f"run-{self.started}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.airflow_run", *args],
                env={**self.env, **env},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc.log = log  # type: ignore[attr-defined]
        return proc

    def nightly(self, day: date, **env: str) -> subprocess.Popen:
        return self.start("run", "--date", day.isoformat(), **env)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, proc.log.read_text()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    tmp = tmp_path_factory.mktemp("two_runs")
    source, payments = tmp / "source.db", tmp / "payments.db"
    generate(
        f"sqlite:///{source}",
        seed=5,
        days=4,
        end_date=END,
        orders_per_day=15,
        payments_db=payments,
        if_exists="replace",
    )
    with running_api(payments, token="two-runs") as api_uri:
        extra = {
            "AIRFLOW_HOME": str(tmp / "airflow"),
            "AIRFLOW_CONN_SOURCE_DB": f"sqlite:///{source}",
            "AIRFLOW_CONN_PAYMENTS_API": api_uri,
            "NIGHTSHIFT_DATA_DIR": str(tmp / "data"),
            "NIGHTSHIFT_DBT_IN_PROCESS": "1",
            "REPORT_TZ": "UTC",
        }
        env = airflow_env(extra)
        for name in ("WAREHOUSE_PATH", "LANDING_DIR", "REPORT_DIR", "QUARANTINE_DIR"):
            env.pop(name, None)
        env.pop("NIGHTSHIFT_WAREHOUSE_LEASE_HOLDER", None)
        ensure_airflow_initialised(env)
        yield Demo(env, tmp / "data")


def _runs(warehouse: Path) -> list[str]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = con.execute("select run_id from ops.pipeline_runs order by 1").fetchall()
        return [r[0] for r in rows]
    finally:
        con.close()


def _assert_whole(demo: Demo) -> None:
    """The published warehouse is one complete run's: both paths agree on every
    (date, region), and no run left its lease or a build behind."""
    con = duckdb.connect(str(demo.warehouse), read_only=True)
    try:
        differ = con.execute(
            "select count(*) from (select date, region, sum(total_sales_usd) s, "
            "sum(order_count) n from analytics.daily_sales group by all) d "
            "full join (select date, region, total_sales_usd s, order_count n "
            "from analytics.sales_summary) e using (date, region) "
            "where d.s is distinct from e.s or d.n is distinct from e.n"
        ).fetchone()[0]
        rows = con.execute("select count(*) from analytics.sales_summary").fetchone()[0]
    finally:
        con.close()
    assert rows > 0 and differ == 0
    assert not (demo.data_dir / "warehouse.duckdb.lease").exists()
    assert not list(demo.data_dir.glob("warehouse.duckdb.*.build"))


def _lease_holder(demo: Demo, timeout: float = 120) -> dict:
    """Wait until a run holds the warehouse; its lease record."""
    path = demo.data_dir / "warehouse.duckdb.lease"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
    raise AssertionError("no run took the warehouse's lease")


def test_nightlies_during_a_backfill_wait_or_fail_naming_it(demo: Demo) -> None:
    """`make backfill` holds the warehouse from its first day to its last. A `make
    nightly` started meanwhile with WAREHOUSE_LEASE_WAIT_S=0 fails at once naming it;
    one with a wait waits, then builds on what the backfill published: both publishes
    stand (without the lease they would run together and one would fail on a publish
    conflict, or revert the other)."""
    first, day = END - timedelta(days=2), END - timedelta(days=1)
    backfill = demo.start("backfill", "--from", str(first), "--to", str(first), "--mode", "local")
    try:
        holder = _lease_holder(demo)
        assert holder["run"].startswith(f"backfill {first}..{first}")
        assert holder["pid"] == backfill.pid  # the command, not one of its tasks, is named
        waiting = demo.nightly(day, WAREHOUSE_LEASE_WAIT_S="300")
        code, out = _finish(demo.nightly(day, WAREHOUSE_LEASE_WAIT_S="0"), timeout=120)
    finally:
        fill_code, fill_out = _finish(backfill)
    assert code != 0
    assert f"nightly {day} (airflow dags test): not started: " in out
    assert f"backfill {first}..{first}, pid {backfill.pid}" in out
    assert " holds the warehouse since " in out and "make unlock" in out
    assert fill_code == 0, fill_out[-3000:]
    wait_code, wait_out = _finish(waiting)
    assert wait_code == 0, wait_out[-3000:]
    assert f"[lease] waiting up to 300s: backfill {first}..{first}, pid " in wait_out
    assert _runs(demo.warehouse) == [str(first), str(day)]
    _assert_whole(demo)


def test_nightlies_started_together_one_runs_the_others_fail_clearly(demo: Demo) -> None:
    """Three `make nightly` at once, two of the same day (same build path, same dag run
    id) and one of another day, none waiting: exactly one builds and publishes, the
    others fail before they start, naming the run that holds the warehouse; nothing
    published before is lost, nothing is torn."""
    before = _runs(demo.warehouse)
    days = [END, END, END - timedelta(days=1)]
    results = [_finish(p) for p in [demo.nightly(d, WAREHOUSE_LEASE_WAIT_S="0") for d in days]]
    won = [d for d, (code, _) in zip(days, results, strict=True) if code == 0]
    assert len(won) == 1, [out[-2000:] for _, out in results]
    for day, (code, out) in zip(days, results, strict=True):
        if code:
            assert f"nightly {day} (airflow dags test): not started: warehouse " in out
            assert f"nightly {won[0]} (airflow dags test), pid " in out
            assert " holds the warehouse since " in out
    assert _runs(demo.warehouse) == sorted(set(before) | {str(won[0])})
    _assert_whole(demo)


_RETRY_DAG = """
import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

TRIES = Path(os.environ["RETRY_TRIES_DIR"])


def _step(name, exc):
    from pipeline.task_run import run_guarded

    def step():
        with open(TRIES / name, "a") as f:
            f.write("try\\n")
        if len((TRIES / name).read_text().splitlines()) == 1:
            raise exc
        return "ok"

    return run_guarded(step)


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def retry_rule():
    @task(retries=2, retry_delay=timedelta(seconds=0))
    def deterministic():
        from core.settings import ConfigError

        return _step("deterministic", ConfigError("REPORT_TZ='Mars/Olympus' is not a zone"))

    @task(retries=2, retry_delay=timedelta(seconds=0))
    def transient():
        return _step("transient", ConnectionError("connection refused"))

    deterministic()
    transient()


retry_rule()
"""


def test_through_airflow_a_deterministic_error_is_not_retried(demo: Demo, tmp_path: Path) -> None:
    """Tasks with retries=2 (retry_delay 0): a ConfigError fails on its first try
    (AirflowFailException from the task wrapper), a ConnectionError is tried again."""
    dags, tries = tmp_path / "dags", tmp_path / "tries"
    dags.mkdir()
    tries.mkdir()
    (dags / "retry_rule.py").write_text(textwrap.dedent(_RETRY_DAG))
    env = {
        **demo.env,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "RETRY_TRIES_DIR": str(tries),
        "NIGHTSHIFT_DATA_DIR": str(tmp_path / "data"),
    }
    proc = subprocess.run(
        [airflow_bin(), "dags", "test", "retry_rule"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0  # the deterministic task failed the run
    assert (tries / "deterministic").read_text().count("try") == 1, out[-3000:]
    assert (tries / "transient").read_text().count("try") == 2, out[-3000:]
    assert "ConfigError (not retried): REPORT_TZ='Mars/Olympus'" in out


def test_a_scheduled_run_takes_its_lease_and_its_teardown_gives_it_up(
    demo: Demo, tmp_path: Path
) -> None:
    """As the scheduler runs it (no calling command holds the lease): the first task
    takes the dag run's lease; a day after today is a ConfigError, so extract_source_db
    (retries=2) fails on its first try; the run is failed and its teardown
    `release_warehouse` gives the lease up."""
    data = tmp_path / "data"
    env = {**demo.env, "NIGHTSHIFT_DATA_DIR": str(data)}
    conf = json.dumps({"business_date": "2099-01-01"})
    proc = subprocess.run(
        [airflow_bin(), "dags", "test", "nightly_sales", "--conf", conf],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "ConfigError (not retried): business day 2099-01-01 is after today" in out
    assert out.count("[DAG TEST] starting task_id=extract_source_db ") == 1
    # taken by the first task (as the dag run), given up by the teardown
    assert "warehouse lease released by nightly_sales/manual__" in out
    assert not (data / "warehouse.duckdb.lease").exists()
