"""Write-audit-publish through the nightly steps: a failing run publishes nothing.

A day is published; then the source gets an order in a currency the FX API does not
know. The next run must fail in the dbt build naming the currency and day, leave the
published warehouse byte for byte as it was (analysts see yesterday's data), and once
the source is fixed, the rerun publishes.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from demo.generator import generate
from demo.run import running_api
from demo.schema import orders
from pipeline import nightly
from warehouse.dbt_runner import DbtError

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


def test_failed_build_leaves_published_warehouse_untouched(sources) -> None:
    engine, warehouse = sources
    nightly.run_all(DAY)
    published = warehouse.read_bytes()

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
    with pytest.raises(DbtError, match=r"XTS.*2026-11-20"):
        nightly.run_all(DAY)
    assert warehouse.read_bytes() == published, "a failed run changed the published warehouse"

    with engine.begin() as conn:  # the source is fixed: the order was a test currency
        conn.execute(
            orders.update()
            .where(orders.c.id == new_id)
            .values(currency="USD", updated_at=changed.replace(hour=2))
        )
    result = nightly.run_all(DAY)
    assert warehouse.read_bytes() != published
    assert result["published"]["sales_summary"] > 0
