"""The parity gate stops a run: when the pandas path's daily_sales is one cent off dbt's
numbers, the nightly fails in check_parity naming the date, region and category with
both values, and the published warehouse stays as it was (write-audit-publish)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

import transform.daily_sales
from demo.generator import generate
from demo.run import running_api
from pipeline import nightly
from quality.parity import ParityError

DAY = date(2026, 11, 20)


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Demo sources (SQLite + the API on loopback) and the DuckDB warehouse's path."""
    source, payments = tmp_path / "source.db", tmp_path / "payments.db"
    generate(
        f"sqlite:///{source}",
        seed=5,
        days=3,
        end_date=DAY,
        orders_per_day=20,
        payments_db=payments,
        if_exists="replace",
    )
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB", f"sqlite:///{source}")
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    for name in ("WAREHOUSE_PATH", "REPORT_TZ", "AIRFLOW_CONN_WAREHOUSE", "DBT_TARGET"):
        monkeypatch.delenv(name, raising=False)
    with running_api(payments, token="t0ken") as api_uri:
        monkeypatch.setenv("AIRFLOW_CONN_PAYMENTS_API", api_uri)
        yield tmp_path / "data" / "warehouse.duckdb"


def _published(path: Path) -> dict[str, list]:
    """Every published table's rows, but the failed gate's own record."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = con.execute(
            "select table_schema || '.' || table_name from information_schema.tables "
            "where table_type = 'BASE TABLE' and table_name <> 'quality_results' order by 1"
        ).fetchall()
        return {n: con.execute(f"select * from {n} order by all").fetchall() for (n,) in names}
    finally:
        con.close()


def test_a_cent_of_disagreement_fails_the_run_and_publishes_nothing(
    warehouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nightly.run_all(DAY)
    before = _published(warehouse)
    summary = {(d, r): t for d, r, t, _ in before["analytics.sales_summary"]}

    real = transform.daily_sales.compute_daily_sales
    changed: dict[str, Any] = {}

    def one_cent_more(*args: Any, **kwargs: Any) -> Any:
        """The ETL path with a rounding defect: the day's first row gains a cent."""
        frame = real(*args, **kwargs)
        row = frame.index[frame["date"] == DAY][0]
        changed.update(frame.loc[row, ["region", "category", "total_sales_usd"]].to_dict())
        frame.loc[row, "total_sales_usd"] = changed["total_sales_usd"] + Decimal("0.01")
        return frame

    monkeypatch.setattr(transform.daily_sales, "compute_daily_sales", one_cent_more)
    with pytest.raises(ParityError) as err:
        nightly.run_all(DAY, full_refresh=True)  # every day recomputed, DAY among them

    message = str(err.value)
    region, category, total = changed["region"], changed["category"], changed["total_sales_usd"]
    elt = summary[(DAY, region)]
    assert f"{DAY} {region!r}: " in message and f"etl={elt + Decimal('0.01')} elt={elt}" in message
    assert f"{DAY} {region!r} {category!r}: order_count daily_sales=" in message
    assert f"total_sales_usd daily_sales={total + Decimal('0.01')} dbt={total}" in message
    assert _published(warehouse) == before, "a run that failed parity changed the warehouse"
