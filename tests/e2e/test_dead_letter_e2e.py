"""The payments dead-letter queue, end to end: `nightly_sales` through `airflow dags test`
against a real PostgreSQL source and the demo API on loopback.

A night quarantines four payments (under the threshold) and publishes; the cause of three
is fixed, and those are gone from the API (re-fetching one id is not possible: the
quarantine is the only copy); `python -m extract.replay` (what `make replay` runs) queues
them; the next run, a same-day rerun, writes its own quarantine file for the fourth
(still broken), keeps the first, and publishes the three, once; a second replay adds
nothing and the queue is retired.

The cause here: the payments service's clock runs ahead, and the pipeline's
`FUTURE_TOLERANCE_MINUTES` (60) quarantined its fresh payments as "from the future";
the operator raises the tolerance to 240 for that source.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from core import clock
from demo.generator import generate
from demo.run import running_api
from extract.replay import open_replays, replay_dir
from pipeline.airflow_run import run_dag
from tests.e2e.harness import REPORT_TZ, TOKEN, api_base_of, assert_matches_oracle, pipeline_env

pytestmark = pytest.mark.e2e

END = date(2026, 11, 20)
DAY = END - timedelta(days=1)  # not the last day with orders
ROOT = Path(__file__).resolve().parents[2]


def _replay(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "extract.replay"],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def _published_payments(warehouse: Path, ids: list[str]) -> list[tuple]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute(
            "select id, cast(amount as varchar) from raw.payments where id in "
            "(select unnest(?)) order by id",
            [ids],
        ).fetchall()
    finally:
        con.close()


@pytest.mark.timeout(900)
def test_quarantined_payments_are_kept_replayed_and_published_once(
    pg_database: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    payments_db = tmp_path / "payments.db"
    generate(
        pg_database,
        seed=5,
        days=3,
        end_date=END,
        orders_per_day=30,
        payments_db=payments_db,
        if_exists="replace",
    )
    engine = sa.create_engine(pg_database)
    warehouse = data_dir / "warehouse.duckdb"
    quarantine = data_dir / "quarantine"
    attempts = quarantine / "payments_api" / "payments" / f"run={DAY.isoformat()}"
    ahead = (clock.now() + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    store = sqlite3.connect(payments_db)
    *ids, broken = [r[0] for r in store.execute("select id from payments order by id limit 4")]
    store.executemany(
        "update payments set amount = ?, updated_at = ? where id = ?",
        [(f"77{i}.01", ahead, pid) for i, pid in enumerate(ids)],
    )
    now = clock.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    store.execute("update payments set amount = 'n/a', updated_at = ? where id = ?", [now, broken])
    store.commit()
    os.environ["REPORT_TZ"] = REPORT_TZ
    try:
        with running_api(payments_db, token=TOKEN) as api_uri:
            env = {
                **pipeline_env(pg_database, data_dir, tmp_path / "airflow"),
                "AIRFLOW_CONN_PAYMENTS_API": api_uri,
            }
            run_dag(DAY, env)  # four payments quarantined, the day published
            assert_matches_oracle(engine, warehouse, api_base_of(api_uri), DAY)
            assert _published_payments(warehouse, [*ids, broken]) == []
            [first] = sorted(attempts.glob("attempt=*.jsonl"))
            entries = {e["record_key"]: e for e in map(json.loads, first.read_text().splitlines())}
            assert sorted(entries) == sorted([*ids, broken])
            assert {(entries[i]["kind"], entries[i]["field"]) for i in ids} == {
                ("future", "updated_at")
            }
            assert entries[broken]["error"] == "'n/a' is not a number"
            kept = first.read_bytes()

            # The API no longer has the three; the cause is fixed (the tolerance fits
            # the service's clock): the replay re-validates the stored records.
            store.execute("delete from payments where id in (?, ?, ?)", ids)
            store.commit()
            fixed = {**env, "FUTURE_TOLERANCE_MINUTES": "240"}
            out = _replay(fixed)
            assert "1 quarantine file(s); 3 record(s) pass" in out and "1 still invalid" in out

            run_dag(DAY, fixed)  # a same-day rerun: lands the three, quarantines the fourth
            assert_matches_oracle(engine, warehouse, api_base_of(api_uri), DAY)
            assert _published_payments(warehouse, [*ids, broken]) == [
                (pid, f"77{i}.01") for i, pid in enumerate(ids)
            ]
            manifest = json.loads(
                (
                    data_dir / "landing/payments_api/payments" / f"run={DAY}" / "_manifest.json"
                ).read_text()
            )
            assert manifest["replayed"] == 3 and manifest["quarantined"] == 1
            assert first.read_bytes() == kept  # its own file; the first one kept
            second = attempts / "attempt=002.jsonl"
            assert [json.loads(x)["record_key"] for x in second.read_text().splitlines()] == [
                broken
            ]

            out = _replay(fixed)  # nothing twice
            assert "2 quarantine file(s); 0 record(s) pass" in out, out
            assert "1 still invalid" in out and "3 already replayed" in out, out
            assert open_replays(quarantine, warehouse) == []  # published: the queue retires
            assert not list((replay_dir(quarantine) / "pending").iterdir())
            assert len(list((replay_dir(quarantine) / "done").iterdir())) == 1
            assert [p.name for p in sorted(attempts.glob("attempt=*.jsonl"))] == [
                "attempt=001.jsonl",
                "attempt=002.jsonl",
            ]
    finally:
        os.environ.pop("REPORT_TZ", None)
        store.close()
        engine.dispose()
