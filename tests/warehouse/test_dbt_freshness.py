"""`dbt source freshness` in the same dbt call as the build, against the run's clock.

The raw tables of test_dbt_project get fixed `_loaded_at` instants; NIGHTSHIFT_NOW pins
the run's clock, so the ages and statuses are exact and never depend on today's date.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tests.warehouse.test_dbt_project import _make_raw
from warehouse.dbt_runner import BuildPlan, dbt_build

LOADED_AT = {
    "orders": "2026-11-28 03:00:00+00",  # 1 h before the clock: pass
    "order_items": "2026-11-26 20:00:00+00",  # 32 h: past warn_after (26 h)
    "payments": "2026-11-25 00:00:00+00",  # 76 h: past error_after (50 h)
    "fx_rates": "2026-11-28 04:00:00+00",
}
NOW = "2026-11-28T04:00:00Z"


@pytest.fixture
def stale_raw(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    _make_raw(path)
    with duckdb.connect(str(path)) as con:
        for table, instant in LOADED_AT.items():
            con.execute(f"update raw.{table} set _loaded_at = ?", [instant])
    return path


def _statuses(result) -> dict[str, tuple[str, float | None]]:
    return {f.table: (f.status, f.age_s) for f in result.freshness}


def test_freshness_runs_with_the_build_against_the_run_clock(
    stale_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_NOW", NOW)
    monkeypatch.delenv("NIGHTSHIFT_DBT_IN_PROCESS", raising=False)  # the nightly's path
    result = dbt_build(
        stale_raw, BuildPlan("UTC", select="stg_fx_rates", freshness=True, target_dir=tmp_path)
    )
    assert result.returncode == 0
    assert [n.name for n in result.nodes if n.resource_type == "model"] == ["stg_fx_rates"]
    assert _statuses(result) == {
        "raw.orders": ("pass", 3600.0),
        "raw.order_items": ("warn", 32 * 3600.0),
        "raw.payments": ("error", 76 * 3600.0),
        "raw.fx_rates": ("pass", 0.0),
    }  # users and products: freshness null (master data may be quiet for weeks)
    payments = next(f for f in result.freshness if f.table == "raw.payments")
    assert (payments.warn_after_s, payments.error_after_s) == (26 * 3600.0, 50 * 3600.0)
    assert payments.snapshotted_at.startswith("2026-11-28T04:00:00")
    assert result.summary()["freshness"]["raw.payments"] == {"status": "error", "age_h": 76.0}
    # read from this call's own file (target/sources.json is shared), kept for the on-call
    assert len(list(tmp_path.glob("sources-*.json"))) == 1


def test_a_later_clock_makes_the_same_rows_staler(
    stale_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_NOW", "2026-11-29T04:00:00Z")  # a day later, same rows
    monkeypatch.setenv("NIGHTSHIFT_DBT_IN_PROCESS", "1")  # dbt's Python API: same steps
    result = dbt_build(
        stale_raw, BuildPlan("UTC", select="stg_fx_rates", freshness=True, target_dir=tmp_path)
    )
    assert _statuses(result)["raw.orders"] == ("pass", 25 * 3600.0)
    assert _statuses(result)["raw.fx_rates"] == ("pass", 24 * 3600.0)
    assert _statuses(result)["raw.order_items"] == ("error", 56 * 3600.0)
