"""Write-audit-publish through the nightly steps: a failing run publishes nothing.

A day is published; then the source gets an order in a currency the FX API does not
know. The next run must fail in the dbt build naming the currency and day, leave every
published table row for row as it was (analysts see yesterday's data) except that
`ops.quality_results` now says why, and once the source is fixed, the rerun publishes.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from demo.generator import generate
from demo.run import running_api
from demo.schema import orders
from pipeline import nightly
from warehouse.dbt_runner import DbtError
from warehouse.publish import PublishConflictError

DAY = date(2026, 11, 20)


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    source = tmp_path / "source.db"
    payments = tmp_path / "payments.db"
    generate(
        f"sqlite:///{source}",
        seed=3,
        days=5,
        end_date=DAY,
        orders_per_day=30,
        payments_db=payments,
        if_exists="replace",
    )
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB", f"sqlite:///{source}")
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    monkeypatch.delenv("WAREHOUSE_PATH", raising=False)
    monkeypatch.delenv("REPORT_TZ", raising=False)
    with running_api(payments, token="t0ken") as api_uri:
        monkeypatch.setenv("AIRFLOW_CONN_PAYMENTS_API", api_uri)
        yield sa.create_engine(f"sqlite:///{source}"), tmp_path / "data" / "warehouse.duckdb"


def _tables(warehouse: Path) -> dict[str, list]:
    """Every published table's rows, except the failed gate's record."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        names = con.execute(
            "select table_schema || '.' || table_name from information_schema.tables "
            "where table_type = 'BASE TABLE' order by 1"
        ).fetchall()
        return {
            n: con.execute(f"select * from {n} order by all").fetchall()
            for (n,) in names
            if n != "ops.quality_results"
        }
    finally:
        con.close()


def _assert_source_reconciled(warehouse: Path) -> None:
    """The SQLite (`make demo`) source ran the source -> landing gate: totals taken in the
    extract's snapshot, compared with the landed files, stored as passed."""
    from core import settings
    from quality.reconcile import SOURCE_CHECKS, SOURCE_SUITE, source_totals_path

    record = json.loads(source_totals_path(settings.landing_dir(), DAY.isoformat()).read_text())
    assert record["unchecked"] == {} and set(record["tables"]) == set(SOURCE_CHECKS)
    assert sum(e["rows"] for e in record["tables"]["orders"]) > 0
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = con.execute(
            "select success from ops.quality_results where run_id = ? and suite = ?",
            [DAY.isoformat(), SOURCE_SUITE],
        ).fetchall()
    finally:
        con.close()
    assert rows == [(True,)] * len(SOURCE_CHECKS)


def test_failed_build_leaves_published_warehouse_untouched(sources) -> None:
    engine, warehouse = sources
    nightly.run_all(DAY)
    published = warehouse.read_bytes()
    tables = _tables(warehouse)
    assert "analytics.sales_summary" in tables
    _assert_source_reconciled(warehouse)

    created = datetime(2026, 11, 20, 12, 0)  # naive UTC, as the generator stores SQLite times
    changed = datetime(2026, 11, 21, 1, 0)  # the application sets updated_at = now()
    with engine.begin() as conn:
        new_id = conn.execute(sa.text("select max(id) + 1 from orders")).scalar()
        conn.execute(
            orders.insert().values(
                id=new_id,
                user_id=1,
                status="paid",
                currency="XTS",
                total=Decimal("10.00"),
                created_at=created,
                updated_at=changed,
            )
        )
    with pytest.raises(
        DbtError,
        match=r"dbt test assert_fx_rate_exists_for_every_counted_order failed: 1 row, "
        r"e\.g\. currency=XTS business_date=2026-11-20 order_count=1 example_order_id=\d+",
    ):
        nightly.run_all(DAY)
    assert _tables(warehouse) == tables, "a failed run changed the published warehouse"
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        (why,) = con.execute(
            "select observed_value from ops.quality_results where run_id = ? and suite = 'dbt' "
            "and not success",
            [DAY.isoformat()],
        ).fetchone()
    finally:
        con.close()
    assert "currency=XTS business_date=2026-11-20 order_count=1" in why

    with engine.begin() as conn:  # the source is fixed: the order was a test currency
        conn.execute(
            orders.update()
            .where(orders.c.id == new_id)
            .values(currency="USD", updated_at=changed.replace(hour=2))
        )
    result = nightly.run_all(DAY)
    assert warehouse.read_bytes() != published
    assert result["published"]["sales_summary"] > 0


def test_two_runs_at_once_the_second_publish_fails_instead_of_reverting_the_first(
    sources,
) -> None:
    """Two runs start from the same published state (a `make nightly` during the
    scheduled night: `airflow dags test` ignores pools and max_active_runs). The one
    that publishes second would silently revert the first's publish: it fails instead,
    naming why, and a rerun publishes on top of the first."""
    _, warehouse = sources
    nightly.run_all(DAY)
    earlier = DAY - timedelta(days=1)
    nightly.extract_source_db(earlier)
    nightly.load_source_db(earlier)  # its build: a copy of what is published now
    nightly.run_all(DAY)  # the other run publishes meanwhile
    published = _tables(warehouse)
    nightly.extract_payments_api(earlier)
    nightly.load_payments_api(earlier)
    nightly.dbt_build(earlier)
    etl = nightly.transform_daily_sales(earlier)
    parity = nightly.check_parity(earlier)
    with pytest.raises(PublishConflictError, match="changed since .* was copied from it"):
        nightly.publish(earlier, {"run_id": str(earlier), **etl, **parity})
    assert _tables(warehouse) == published  # nothing lost, nothing reverted
    nightly.run_all(earlier)  # the rerun starts from what is published now
