"""End to end: the nightly on a Snowflake warehouse, as far as fakesnow emulates one.

`python -m pipeline.nightly --date …` (the plain runner, `run_all`: every step of the
DAG in order) in a subprocess of .venv, with `AIRFLOW_CONN_WAREHOUSE=snowflake://…
?emulator=fakesnow` pointing at fakesnow's server (tests/warehouse/fakesnow_server.py,
run from .venv-adapters), a real PostgreSQL source and the payments API on loopback.
dbt runs with dbt-snowflake from .venv-adapters against the same server.

Day 1 is published and equals the SQL oracle (tests/e2e/oracle.py); the next day at the
source (late orders, updates, deletes) is published and every day up to it equals the
oracle again; a rerun of day 2 leaves the published tables identical. What fakesnow
cannot run (schema CLONE and SWAP WITH: the build and publish statements) goes through
the warehouse's `emulator=fakesnow` path, named in docs/warehouse-backends.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from demo.generator import apply_next_day, generate
from demo.run import running_api
from tests.e2e.harness import (
    REPORT_TZ,
    TOKEN,
    api_base_of,
    assert_matches_oracle,
    pipeline_env,
    snapshot,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
END = date(2026, 11, 20)
# a fixed "now" after every business day of the test: nothing depends on today's date
NOW = "2026-11-23T12:00:00Z"


@pytest.fixture(scope="module")
def snowflake_url() -> Any:
    """fakesnow's server from .venv-adapters (built by `make adapters-venv` when missing;
    the test is skipped, saying why, only when that cannot be built)."""
    from tests.warehouse.fakesnow_server import fakesnow_server
    from tests.warehouse.test_dbt_adapters import ADAPTERS_VENV

    python = ADAPTERS_VENV / "bin" / "python"
    done = subprocess.run(
        ["make", "--no-print-directory", "adapters-venv", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0 or not python.exists():
        pytest.skip(f".venv-adapters cannot be built here: {done.stderr[-500:]}")
    with fakesnow_server(python) as url:
        yield url


def _nightly(day: date, env: dict[str, str], logs: Path) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.nightly", "--date", day.isoformat()],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = logs / f"nightly-{day.isoformat()}-{int(started)}.log"
    log.write_text(done.stdout + "\n" + done.stderr)
    assert done.returncode == 0, (
        f"nightly {day} on fakesnow failed (exit {done.returncode}; whole log {log}):\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-8000:]}"
    )
    return time.monotonic() - started


def test_nightly_on_emulated_snowflake(
    pg_database: str, snowflake_url: str, tmp_path: Path
) -> None:
    from warehouse.backends.snowflake import SnowflakeWarehouse
    from warehouse.publish import last_published_day

    data_dir = tmp_path / "data"
    payments_db = tmp_path / "payments.db"
    generate(
        pg_database,
        seed=7,
        days=6,
        end_date=END,
        orders_per_day=40,
        payments_db=payments_db,
        if_exists="replace",
    )
    engine = sa.create_engine(pg_database)
    warehouse = SnowflakeWarehouse(snowflake_url)
    assert warehouse.emulator == "fakesnow"
    env = {
        **pipeline_env(pg_database, data_dir, tmp_path / "airflow"),
        "AIRFLOW_CONN_WAREHOUSE": snowflake_url,
        "NIGHTSHIFT_NOW": NOW,
        "PYTHONPATH": str(ROOT),
    }
    os.environ["REPORT_TZ"] = REPORT_TZ  # for the oracle helpers that read settings
    seconds = {}
    try:
        with running_api(payments_db, token=TOKEN) as api_uri:
            api_base = api_base_of(api_uri)
            env["AIRFLOW_CONN_PAYMENTS_API"] = api_uri

            day1 = END - timedelta(days=2)
            seconds["day1"] = _nightly(day1, env, tmp_path)
            assert_matches_oracle(engine, warehouse, api_base, day1)
            assert (data_dir / "report" / f"{day1.isoformat()}.html").exists()
            assert warehouse.generation() == 1
            before = snapshot(warehouse)

            summary = apply_next_day(pg_database, seed=8, payments_db=payments_db)
            day2 = date.fromisoformat(str(summary["date"]))
            seconds["day2"] = _nightly(day2, env, tmp_path)
            assert_matches_oracle(engine, warehouse, api_base, day2)
            after = snapshot(warehouse)
            assert after != before, "day 2 changed nothing"

            seconds["rerun"] = _nightly(day2, env, tmp_path)
            assert snapshot(warehouse) == after
            # the horizon the next run starts from (an earlier day never unpublishes it)
            assert last_published_day(warehouse) == day2
            assert warehouse.generation() == 3
            assert not (data_dir / "warehouse.duckdb").exists(), "a DuckDB file was written"
            leftovers = warehouse.read_arrow(
                "select schema_name from information_schema.schemata where schema_name like ?",
                ["%\\_\\_BUILD\\_%"],
            )
            assert leftovers.num_rows == 0, leftovers.to_pylist()
            lease = warehouse.lease_backend().read()
            assert lease is None, f"the run's lease was not released: {lease}"
    finally:
        os.environ.pop("REPORT_TZ", None)
        engine.dispose()
    print(f"nightly on fakesnow: {seconds}", file=sys.stderr)
