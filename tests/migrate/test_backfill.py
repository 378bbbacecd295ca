"""The backfill: idempotent, never replaces a newer row, and a kill at any point
(an exception between its statements, or SIGKILL of the process) neither skips nor
doubles a row on resume."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from migrate.backfill import BackfillPlan, backfill_table, read_checkpoint, run_backfill
from migrate.progress import Progress
from migrate.verify import verify_table
from tests.migrate.conftest import count, execute

ROOT = Path(__file__).resolve().parents[2]
# no bar on the test's stderr
QUIET = BackfillPlan(progress_bar=False)


def _snapshot(engine, table: str) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1")).all()


def _checkpoint(engine, name: str) -> tuple:
    with engine.connect() as conn:
        return read_checkpoint(conn, name)


def test_rerun_gives_identical_tables(engines, mappings) -> None:
    old, new = engines
    run_backfill(old, new, mappings, list(mappings.values()), progress_bar=False)
    first = {m.new_table: _snapshot(new, m.new_table) for m in mappings.values()}
    again = [
        backfill_table(old, new, m, replace(QUIET, restart=True, batch_size=37))
        for m in mappings.values()
    ]
    assert {m.new_table: _snapshot(new, m.new_table) for m in mappings.values()} == first
    for result, mapping in zip(again, mappings.values(), strict=True):
        assert result.rows_done == result.rows_copied == count(old, mapping.old_table)
        assert _checkpoint(new, mapping.name)[1:] == (result.rows_done, True)


def test_crash_between_upsert_and_checkpoint_loses_and_doubles_nothing(engines, mappings) -> None:
    old, new = engines
    mapping = mappings["order_items"]
    total = count(old, "order_items")

    def crash(_mapping, batch: int) -> None:
        if batch == 3:
            raise RuntimeError("killed between statements")

    with pytest.raises(RuntimeError, match="killed between statements"):
        backfill_table(old, new, mapping, replace(QUIET, batch_size=50, hook=crash))
    last_key, done, finished = _checkpoint(new, mapping.name)
    assert (done, finished) == (150, False)
    assert count(new, "order_items") == 150  # the 4th batch's upsert was rolled back
    with new.connect() as conn:
        assert conn.execute(sa.text("SELECT max(id) FROM order_items")).scalar_one() == last_key

    resumed = backfill_table(old, new, mapping, replace(QUIET, batch_size=50))
    assert resumed.resumed_from == last_key
    assert resumed.rows_copied == total - 150
    assert resumed.rows_done == total == count(new, "order_items")
    assert verify_table(old, new, mapping).clean


def test_sigkill_mid_backfill_then_resume(engines, mappings, old_sqlite_url, new_pg_url) -> None:
    old, new = engines
    mapping = mappings["order_items"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "migrate", "--old", old_sqlite_url, "--new", new_pg_url,
        "--tables", "order_items", "backfill", "--batch-size", "20",
        "--rows-per-second", "200", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while _checkpoint(new, mapping.name)[1] < 60:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "backfill made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    _, done, finished = _checkpoint(new, mapping.name)
    assert not finished and 60 <= done < count(old, "order_items")
    assert count(new, "order_items") == done  # whole batches only

    resumed = backfill_table(old, new, mapping, replace(QUIET, batch_size=20))
    assert resumed.rows_copied == count(old, "order_items") - done
    assert count(new, "order_items") == count(old, "order_items") == resumed.rows_done
    assert verify_table(old, new, mapping).clean


def test_backfill_never_replaces_a_newer_row(engines, mappings) -> None:
    old, new = engines
    run_backfill(old, new, mappings, [mappings["orders"]], progress_bar=False)
    # a dual write after the backfill read the row: newer version in new
    execute(
        new,
        "UPDATE orders SET status = 'on_hold', updated_at = updated_at + interval '1 day' "
        "WHERE id = 5",
    )
    backfill_table(old, new, mappings["orders"], replace(QUIET, restart=True))
    with new.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT status FROM orders WHERE id = 5")).scalar_one()
            == "on_hold"
        )
    # an older row in new is replaced
    execute(
        new,
        "UPDATE orders SET status = 'x', updated_at = updated_at - interval '1 day' WHERE id = 6",
    )
    backfill_table(old, new, mappings["orders"], replace(QUIET, restart=True))
    result = verify_table(old, new, mappings["orders"])
    assert result.changed == [(5, ["status", "updated_at"])]


def test_progress_reports_rows_rate_and_eta() -> None:
    out = io.StringIO()
    progress = Progress("backfill orders", 200, bar=True, stream=out)
    progress.update(50)
    line = progress.line()
    assert line.startswith("backfill orders: 50/200 rows (25%), ")
    assert "rows/s, ETA " in line
    assert "[#######......................." in out.getvalue()


def test_an_unconvertible_row_is_quarantined_and_stays_visible(engines, mappings) -> None:
    old, new = engines
    execute(old, "UPDATE orders SET total = 12.345 WHERE id = 3")
    result = backfill_table(old, new, mappings["orders"], replace(QUIET, batch_size=40))
    assert result.rows_done == count(old, "orders")  # the copy went on
    with new.connect() as conn:
        held = conn.execute(
            sa.text("SELECT table_name, row_key, error, old_row FROM ops.migration_quarantine")
        ).all()
    assert [(h.table_name, h.row_key) for h in held] == [("orders", 3)]
    assert "orders id=3 field total: 12.345 has more than 2 decimals" in held[0].error
    assert json.loads(held[0].old_row)["total"].startswith("12.345")
    assert verify_table(old, new, mappings["orders"]).missing == [3]


def test_the_plan_s_fields_may_be_given_as_keywords(engines, mappings) -> None:
    """Callers that pass the options one by one (`python -m migrate backfill`,
    `migrate.tasks.backfill(**opts)`) get the plan of those fields; a plan and fields
    together, or a name that is no field, are refused before anything is written."""
    old, new = engines
    result = backfill_table(old, new, mappings["orders"], batch_size=40, progress_bar=False)
    assert result.batches == -(-count(old, "orders") // 40)
    with pytest.raises(TypeError, match="not both"):
        backfill_table(old, new, mappings["orders"], QUIET, restart=True)
    with pytest.raises(TypeError, match="batchsize"):
        run_backfill(old, new, mappings, [mappings["customers"]], batchsize=10)
    assert count(new, "customers") == 0
