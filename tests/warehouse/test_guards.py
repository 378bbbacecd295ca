"""The mass-delete guard (warehouse/guards.py) on a real DuckDB file: what trips it
(share of a table, a floor of rows, age), the error it raises, the override it records,
and the limits file."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from core.settings import guards_config_path
from warehouse.guards import (
    DeleteLimit,
    MassDeleteError,
    MassDeleteGuard,
    enforce,
    plan_delete,
)

GONE = "select o.* from raw.items o anti join keys k on o.id = k.id"
KEY = "cast(g.id as varchar)"


@pytest.fixture
def con(tmp_path: Path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("create schema raw; create schema ops")
    con.execute(
        "create table raw.items as select range as id, "
        "now() - to_days(cast(range % 100 as integer)) as updated_at from range(1000)"
    )
    yield con
    con.close()


def keep(con: duckdb.DuckDBPyConnection, n: int) -> None:
    """The source's key set: the first `n` ids."""
    con.execute(f"create or replace temp table keys as select range as id from range({n})")


def test_a_small_delete_passes_a_large_one_trips_naming_counts_and_keys(con) -> None:
    keep(con, 960)  # 40 of 1000 gone: 4%
    small = plan_delete(con, "items", "raw.items", GONE, KEY, DeleteLimit())
    assert (small.rows, small.of_rows, small.trips) == (40, 1000, False)
    enforce(con, [small], run_id="r", allow=False)  # nothing raised

    keep(con, 0)  # the source table is empty
    big = plan_delete(con, "items", "raw.items", GONE, KEY, DeleteLimit())
    assert big.trips and big.sample_keys == ["0", "1", "10", "100", "101"]
    with pytest.raises(MassDeleteError, match=r"raw\.items: this run would delete 1000 of 1000"):
        enforce(con, [big], run_id="r", allow=False)


def test_the_floor_of_rows_and_the_age_limit(con) -> None:
    keep(con, 995)  # 5 rows gone, 0.5%: under the share
    tiny = DeleteLimit(max_share=0.001, min_rows=10)
    assert not plan_delete(con, "items", "raw.items", GONE, KEY, tiny).trips  # under the floor
    aged = DeleteLimit(max_age_days=30)  # ids 995..999 are 95..99 days old
    planned = plan_delete(con, "items", "raw.items", GONE, KEY, aged)
    assert planned.too_old == 5 and planned.trips
    assert "5 of them last updated more than 30 days ago" in planned.describe()


def test_the_age_limit_counts_age_on_the_run_clock(con, monkeypatch) -> None:
    """A replay of a night 60 days on (NIGHTSHIFT_NOW) sees rows aged by the run's clock,
    not by the warehouse server's: every gone row is then over 30 days old."""
    keep(con, 995)
    aged = DeleteLimit(max_age_days=30)
    monkeypatch.setenv("NIGHTSHIFT_NOW", "+60d")
    assert plan_delete(con, "items", "raw.items", GONE, KEY, aged).too_old == 5
    keep(con, 900)  # ids 900..999: updated 0..99 days before the server's now
    assert plan_delete(con, "items", "raw.items", GONE, KEY, aged).too_old == 100
    monkeypatch.setenv("NIGHTSHIFT_NOW", "-80d")  # no row is 30 days older than that
    assert plan_delete(con, "items", "raw.items", GONE, KEY, aged).too_old == 0


def test_the_override_is_recorded_in_the_load_transaction(con) -> None:
    keep(con, 0)
    planned = plan_delete(con, "items", "raw.items", GONE, KEY, DeleteLimit())
    enforce(con, [planned], run_id="2026-11-20", allow=True)
    [(run, guard, table, details)] = con.execute(
        "select run_id, guard, table_name, details from ops.guard_overrides"
    ).fetchall()
    assert (run, guard, table) == ("2026-11-20", "mass_delete", "items")
    assert json.loads(details)["rows"] == 1000 and json.loads(details)["max_share"] == 0.05


def test_the_limits_file(tmp_path: Path) -> None:
    shipped = MassDeleteGuard.load(guards_config_path())
    assert shipped.limit("order_items") == DeleteLimit(0.05, 10, None)
    path = tmp_path / "guards.yml"
    path.write_text(
        "mass_delete:\n  max_share: 0.1\n  tables:\n    order_items: {max_share: 0.02}\n"
    )
    guard = MassDeleteGuard.load(path)
    assert guard.limit("order_items").max_share == 0.02
    assert guard.limit("users") == DeleteLimit(0.1, 10, None)
    path.write_text("mass_delete:\n  max_shares: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_shares'\]"):
        MassDeleteGuard.load(path)
    path.write_text("mass_delete:\n  max_share: 5\n")
    with pytest.raises(ValueError, match=r"max_share=5 must be a number from 0 to 1"):
        MassDeleteGuard.load(path)
    assert MassDeleteGuard.load(tmp_path / "missing.yml") == MassDeleteGuard()
