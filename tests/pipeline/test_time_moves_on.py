"""Time moves on, end to end on a real PostgreSQL source and the demo API: a provider
revises a past day's FX rates, an operator rolls the warehouse back, and the retention
policy prunes old files without removing anything a later night needs.

The nights run the DAG's step functions in order (`pipeline.nightly.run_all`); the
published tables are checked against the independent SQL oracle.
"""

from __future__ import annotations

import os
from datetime import date, timedelta
from pathlib import Path

import duckdb
import httpx
import pytest
import sqlalchemy as sa

from demo.generator import apply_next_day, generate
from demo.run import running_api
from pipeline import nightly
from tests.e2e.oracle import expected_tables, load_fx, order_days
from warehouse.publish import list_versions
from warehouse.rollback import main as rollback_main

END = date(2026, 11, 20)
TZ = "America/New_York"
TOKEN = "t1me-token"
ADMIN_TOKEN = "t1me-fault-token"  # the fault-injection endpoint's own


@pytest.fixture
def source(pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    payments = tmp_path / "payments.db"
    generate(pg_database, seed=21, days=10, end_date=END, orders_per_day=12, payments_db=payments)
    data = tmp_path / "data"
    for name, value in {
        "NIGHTSHIFT_DATA_DIR": str(data),
        "AIRFLOW_CONN_SOURCE_DB": pg_database,
        "NIGHTSHIFT_NO_AIRFLOW_LOOKUP": "1",
        "REPORT_TZ": TZ,
        "FX_REVISION_DAYS": "4",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WAREHOUSE_PATH", raising=False)
    with running_api(payments, token=TOKEN, admin_token=ADMIN_TOKEN) as api_uri:
        monkeypatch.setenv("AIRFLOW_CONN_PAYMENTS_API", api_uri)
        yield pg_database, payments, data, "http://" + api_uri.split("@", 1)[1]


def tables(warehouse: Path) -> tuple[set, set]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return (
            set(con.sql("select date, region, total_sales_usd, order_count from "
                        "analytics.sales_summary").fetchall()),
            set(con.sql("select * from analytics.daily_sales").fetchall()),
        )  # fmt: skip


def oracle(url: str, api: str, through: date) -> tuple[set, set]:
    engine = sa.create_engine(url)
    try:
        load_fx(engine, api, TOKEN, order_days(engine, TZ, through))
        return expected_tables(engine, TZ, through)
    finally:
        engine.dispose()


def revise(api: str, day: date, rates: dict[str, str]) -> None:
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        client.post(
            "/_admin/faults", json={"fx_revisions": {day.isoformat(): rates}}
        ).raise_for_status()


def test_a_revised_rate_restates_its_day_in_both_tables_and_the_report(source) -> None:
    url, payments, data, api = source
    warehouse = data / "warehouse.duckdb"
    revised_day = END - timedelta(days=2)
    nightly.run_all(revised_day)  # its report page exists
    nightly.run_all(END)
    before = tables(warehouse)
    assert before == oracle(url, api, END)

    revise(api, revised_day, {"EUR": "0.5000", "GBP": "0.4000"})
    nightly.run_all(END)  # a rerun of the same day picks the revision up
    after = tables(warehouse)
    assert after == oracle(url, api, END)
    changed = {row[0] for row in before[0] ^ after[0]}
    assert changed == {revised_day}, changed
    with duckdb.connect(str(warehouse), read_only=True) as con:
        reasons = con.execute(
            "select business_date, reason from ops.restated_days where run_id = ? "
            "and reason = 'fx rate revised'",
            [END.isoformat()],
        ).fetchall()
    assert reasons == [(revised_day, "fx rate revised")]
    page = (data / "report" / f"{revised_day.isoformat()}.html").read_text()
    assert "Restated" in page and "fx rate revised" in page


def test_outside_the_window_a_revision_waits_for_a_full_rebuild(source) -> None:
    url, payments, data, api = source
    warehouse = data / "warehouse.duckdb"
    nightly.run_all(END)
    first = tables(warehouse)
    old_day = END - timedelta(days=6)  # FX_REVISION_DAYS=4: END-3 .. END are asked again
    revise(api, old_day, {"EUR": "0.5000", "GBP": "0.4000"})
    nightly.run_all(END)
    assert tables(warehouse) == first  # the cached rates of old_day stand
    nightly.run_all(END, full_refresh=True)
    rebuilt = tables(warehouse)
    assert rebuilt == oracle(url, api, END)
    assert {row[0] for row in first[0] ^ rebuilt[0]} == {old_day}


def test_rollback_then_retention_and_the_nights_go_on(
    source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    url, payments, data, api = source
    warehouse = data / "warehouse.duckdb"
    policy = tmp_path / "retention.yml"
    policy.write_text("landing_runs_days: 2\nrun_folders_days: 2\nwarehouse_versions: 3\n")
    monkeypatch.setenv("RETENTION_CONFIG", str(policy))
    nightly.run_all(END - timedelta(days=3))
    nightly.run_all(END)
    at_end = tables(warehouse)
    day2 = date.fromisoformat(str(apply_next_day(url, seed=5, payments_db=payments)["date"]))
    nightly.run_all(day2)
    assert tables(warehouse) == oracle(url, api, day2) != at_end

    assert rollback_main([]) == 0  # back to the version run END published
    assert "rolled back to the version run 2026-11-20 published" in capsys.readouterr().out
    assert tables(warehouse) == at_end
    with duckdb.connect(str(warehouse), read_only=True) as con:
        runs = con.execute("select run_id from ops.pipeline_runs order by published_at").fetchall()
    assert runs[-1][0].startswith("rollback-") and "2026-11-21" not in {r[0] for r in runs}
    assert not (data / "report" / f"{day2.isoformat()}.html").exists()

    nightly.run_all(day2)  # the next night builds on the restored state
    assert tables(warehouse) == oracle(url, api, day2)
    assert (data / "report" / f"{day2.isoformat()}.html").exists()
    # retention ran at the end of each night: two days of landing runs, three versions
    runs_left = sorted(p.name for p in (data / "landing/source_db/orders").glob("run=*"))
    assert runs_left == [f"run={END.isoformat()}", f"run={day2.isoformat()}"]
    assert sorted(p.name for p in (data / "runs").iterdir()) == [
        END.isoformat(),
        day2.isoformat(),
    ]
    assert len(list_versions(warehouse)) == 3
    assert os.path.exists(warehouse)


def test_a_day_that_has_not_started_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import ConfigError

    monkeypatch.setenv("NIGHTSHIFT_NOW", "2026-11-21T03:00:00Z")  # 22:00 on the 20th in NY
    monkeypatch.setenv("REPORT_TZ", TZ)
    with pytest.raises(ConfigError, match=r"business day 2026-11-21 is after today \(2026-11-20"):
        nightly.extract_source_db(date(2026, 11, 21))


def test_today_is_run_with_a_warning_that_it_is_partial(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_NOW", "2026-11-21T03:00:00Z")  # 22:00 on the 20th in NY
    monkeypatch.setenv("REPORT_TZ", TZ)
    with caplog.at_level("WARNING", logger="pipeline.nightly"):
        nightly._refuse_future_day(date(2026, 11, 19))
        assert not caplog.records
        nightly._refuse_future_day(date(2026, 11, 20))
    assert caplog.messages == [
        f"business day 2026-11-20 has not ended (REPORT_TZ={TZ}): its figures are partial, "
        "as the source stands now; a run after the day ends publishes it whole"
    ]


def test_a_warehouse_the_nightly_cannot_run_on_or_another_dbt_target_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A configured warehouse the nightly is not wired for (BigQuery) or a DBT_TARGET
    that disagrees with the warehouse stops the run naming the setting (never the
    password), instead of the nightly silently building another warehouse."""
    from core.settings import ConfigError

    monkeypatch.setenv("NIGHTSHIFT_NOW", "2026-11-21T03:00:00Z")
    monkeypatch.delenv("DBT_TARGET", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", "bigquery://etl:s3cret@project/dataset")
    with pytest.raises(
        ConfigError, match=r"configured as bigquery .*duckdb and postgres and snowflake"
    ) as caught:
        nightly.extract_source_db(date(2026, 11, 20))
    assert "s3cret" not in str(caught.value)
    monkeypatch.delenv("AIRFLOW_CONN_WAREHOUSE")
    monkeypatch.setenv("DBT_TARGET", "postgres")
    with pytest.raises(ConfigError, match=r"DBT_TARGET='postgres' does not match the warehouse"):
        nightly.extract_source_db(date(2026, 11, 20))
