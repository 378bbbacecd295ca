"""End to end through real Airflow: a backfill of past days after later nights were
published never removes or leaves stale a published day.

Nights D1 and D2 are published (`airflow dags test`); the source then changes again
(late orders for earlier days, updates, deletes, a region move). `make backfill`'s
runner (`pipeline.airflow_run.backfill`, one `dags test` per day) then runs an earlier
range. Both tables must equal the independent SQL oracle for every day up to D2 (the
published horizon), equal what one run for D2 publishes from a fresh data dir, agree
for every (date, region); the report's day pages must match the tables. A second
backfill of the same range changes nothing.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from demo.generator import apply_next_day
from pipeline.airflow_run import backfill, run_dag
from tests.e2e.harness import (
    END,
    assert_matches_oracle,
    running_source,
    snapshot,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _report_matches_tables(warehouse: Path, report: Path) -> int:
    """Every day page's CSV holds exactly that day's daily_sales rows; returns pages."""
    pages = sorted(report.glob("????-??-??.csv"))
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for page in pages:
            day = date.fromisoformat(page.stem)
            want = {
                (r, c, str(t), str(n))
                for r, c, t, n in con.execute(
                    "select region, category, total_sales_usd, order_count "
                    "from analytics.daily_sales where date = ?",
                    [day],
                ).fetchall()
            }
            with page.open() as f:
                rows = list(csv.DictReader(f))
            got = {
                (r["region"], r["category"], str(Decimal(r["total_sales_usd"])), r["order_count"])
                for r in rows
            }
            assert got == want, f"report page {day} does not match analytics.daily_sales"
    return len(pages)


def _one_run(env: dict[str, str], day: date, data_dir: Path) -> dict[str, list]:
    """What a single run for `day` publishes from an empty data dir (same step functions)."""
    run_env = {**os.environ, **env, "NIGHTSHIFT_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    run_env["NIGHTSHIFT_NO_AIRFLOW_LOOKUP"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.nightly", "--date", day.isoformat()],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return snapshot(data_dir / "warehouse.duckdb")


def test_backfill_after_later_nights_keeps_every_published_day(
    postgres_admin_url: str, tmp_path: Path
) -> None:
    with running_source(
        postgres_admin_url,
        tmp_path,
        prefix="nightshift_backfill",
        seed=11,
        days=10,
        orders_per_day=30,
    ) as running:
        engine, env, api_base = running.engine, running.env, running.api_base
        data_dir, warehouse, payments_db = running.data_dir, running.warehouse, running.payments_db
        run_dag(END - timedelta(days=1), env)  # D1
        apply_next_day(running.url, seed=12, payments_db=payments_db)  # END + 1
        d2 = END + timedelta(days=1)
        run_dag(d2, env)
        assert_matches_oracle(engine, warehouse, api_base, d2)
        published_days = {r[0] for r in snapshot(warehouse)["sales_summary"]}

        # the source moves on: late rows for earlier days, updates, deletes, a move
        apply_next_day(running.url, seed=13, payments_db=payments_db)  # END + 2
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "update users set region = 'moved', updated_at = "
                    "(select max(updated_at) from orders) + interval '1 minute' "
                    "where id in (select user_id from orders where created_at "
                    "< '2026-11-19' order by id desc limit 3)"
                )
            )

        first, last = END - timedelta(days=4), END - timedelta(days=3)
        assert backfill(first, last, env) == 0
        after = snapshot(warehouse)
        days = {r[0] for r in after["sales_summary"]}
        assert max(days) == d2 and published_days <= days, "a published day was removed"
        assert {r[0] for r in after["daily_sales"]} == days
        assert_matches_oracle(engine, warehouse, api_base, d2)  # the moves are applied
        assert any(r[1] == "moved" for r in after["sales_summary"])
        assert _one_run(env, d2, tmp_path / "fresh") == after
        pages = _report_matches_tables(warehouse, data_dir / "report")
        assert pages >= 4  # D1, D2 and the two backfilled days

        reports = {p.name: p.read_bytes() for p in (data_dir / "report").glob("*.csv")}
        assert backfill(first, last, env) == 0  # a second backfill changes nothing
        assert snapshot(warehouse) == after
        assert {p.name: p.read_bytes() for p in (data_dir / "report").glob("*.csv")} == reports

        # the operator's full rebuild (the DAG param make nightly FULL=1 sets) gives
        # the same tables: source read in full, every published day recomputed
        run_dag(d2, env, full_refresh=True)
        manifest = json.loads(
            (data_dir / f"landing/source_db/orders/run={d2}/_manifest.json").read_text()
        )
        assert manifest["mode"] == "full" and manifest["full_refresh"] is True
        with duckdb.connect(str(warehouse), read_only=True) as con:
            recomputed = con.execute(
                "select count(*) from ops.daily_sales_days where run_id = ?", [str(d2)]
            ).fetchone()[0]
        assert recomputed >= len(days)
        assert snapshot(warehouse) == after
