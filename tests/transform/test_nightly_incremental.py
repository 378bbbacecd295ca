"""The nightly steps on a real PostgreSQL source: incremental daily_sales and the
source -> landing reconciliation gate, through pipeline/nightly.py (no mocks).

Night 1 builds everything; the generator then plays a day (new, late and updated
orders, item deletes) and night 2 must recompute exactly the restated days plus the
new day, leave every other day's rows as they were, and equal a full rebuild. Night 3
has a landed file tampered with between extract and load: the load step fails naming
the table, the business day and both numbers, and nothing is published.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from demo.generator import apply_next_day, generate
from demo.run import running_api
from pipeline import nightly
from quality.reconcile import SOURCE_SUITE, ReconciliationError
from transform.daily_sales import compute_daily_sales

DAY = date(2026, 11, 20)
TZ = "America/New_York"


@pytest.fixture
def pg_nightly(pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    payments = tmp_path / "payments.db"
    generate(pg_database, seed=9, days=30, end_date=DAY, orders_per_day=10, payments_db=payments)
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB", pg_database)
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    monkeypatch.setenv("REPORT_TZ", TZ)
    monkeypatch.delenv("WAREHOUSE_PATH", raising=False)
    with running_api(payments, token="t0ken") as api_uri:
        monkeypatch.setenv("AIRFLOW_CONN_PAYMENTS_API", api_uri)
        yield pg_database, payments, tmp_path / "data"


def query(warehouse: Path, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def daily_sales_by_day(warehouse: Path, through: date) -> dict[date, list[tuple]]:
    days: dict[date, list[tuple]] = {}
    for row in query(
        warehouse,
        "select * from analytics.daily_sales where date <= ? order by date, region, category",
        [through],
    ):
        days.setdefault(row[0], []).append(row)
    return days


def test_nightly_runs_recompute_only_changed_days_and_reconcile_the_source(pg_nightly) -> None:
    url, payments, data = pg_nightly
    warehouse = data / "warehouse.duckdb"

    # night 1: first run, everything computed; the source totals were reconciled
    nightly.run_all(DAY)
    night1 = daily_sales_by_day(warehouse, DAY)
    computed = query(warehouse, "select count(*), min(run_id) from ops.daily_sales_days")
    assert computed[0][0] >= 30 and computed[0][1] == DAY.isoformat()
    checks = query(
        warehouse,
        "select column_name, success from ops.quality_results where suite = ? and run_id = ?",
        [SOURCE_SUITE, DAY.isoformat()],
    )
    assert len(checks) == 4 and all(ok for _, ok in checks)

    # night 2: late, updated and deleted rows touch some earlier days
    day2 = DAY + timedelta(days=1)
    apply_next_day(url, date=day2, payments_db=payments)
    nightly.run_all(day2)
    restated = {
        r[0]
        for r in query(
            warehouse,
            "select distinct business_date from ops.restated_days where run_id = ?",
            [day2.isoformat()],
        )
    }
    recomputed = {
        r[0]
        for r in query(
            warehouse,
            "select business_date from ops.daily_sales_days where run_id = ?",
            [day2.isoformat()],
        )
    }
    assert recomputed == {d for d in restated if d <= day2} | {day2}
    night2 = daily_sales_by_day(warehouse, day2)
    untouched = [d for d in night1 if d not in recomputed]
    assert untouched, "the generator's day should leave some days alone"
    for day in untouched:
        assert night2[day] == night1[day]
    full = compute_daily_sales(warehouse, TZ, day2)
    assert [tuple(r) for r in full.itertuples(index=False)] == [
        row for day in sorted(night2) for row in night2[day]
    ]

    # night 3: a landed order total is changed between extract and load
    day3 = day2 + timedelta(days=1)
    apply_next_day(url, date=day3, payments_db=payments)
    published = warehouse.read_bytes()
    nightly.extract_source_db(day3)
    [part] = (data / "landing/source_db/orders" / f"run={day3.isoformat()}").glob("*.parquet")
    table = pq.read_table(part)
    totals = table.column("total").to_pylist()
    totals[0] += Decimal("1.00")
    column = pa.array(totals, table.schema.field("total").type)
    pq.write_table(table.set_column(table.schema.get_field_index("total"), "total", column), part)
    with pytest.raises(ReconciliationError, match=r"source_db\.orders business day \d{4}-\d\d-\d\d: "
                       r"source \d+ rows / [\d.]+ vs landing \d+ rows / [\d.]+"):  # fmt: skip
        nightly.load_source_db(day3)
    assert query(warehouse, "select max(date) from analytics.daily_sales")[0][0] == day2
    assert warehouse.read_bytes() == published or (
        daily_sales_by_day(warehouse, day2) == night2  # a failed gate may record its results
    )
