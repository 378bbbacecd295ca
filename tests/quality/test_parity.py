"""The parity gate's failure message (quality/parity.py): a (date, region) whose
daily_sales total is one cent off is named with both totals, and so is the category of
daily_sales that differs from dbt's counted orders, with both values."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from quality.parity import ParityError, check_sales_parity

D1, D2 = date(2026, 3, 7), date(2026, 3, 8)

# dbt's orders (marts.fct_orders): (order_id, business_date, region, category, usd_cents,
# is_counted); sales_summary and daily_sales are built from them below, as both paths do.
ORDERS = [
    (1, D1, "US", "books", 1250, True),
    (2, D1, "US", "games", 1500, True),
    (3, D1, "US", "games", 999, False),  # cancelled: not counted
    (4, D1, "EU", "books", 700, True),
    (5, D2, "US", "books", 100, True),
]


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create schema marts")
    con.execute("create schema analytics")
    con.execute(
        "create table marts.fct_orders (order_id bigint, business_date date, region varchar, "
        "category varchar, usd_cents bigint, is_counted boolean)"
    )
    con.executemany("insert into marts.fct_orders values (?, ?, ?, ?, ?, ?)", ORDERS)
    counted = "from marts.fct_orders where is_counted"
    cents = "cast(sum(usd_cents) as decimal(38, 0)) * 0.01 as decimal(18, 2)"
    con.execute(
        f"create table analytics.sales_summary as select business_date as date, region, "
        f"cast({cents}) as total_sales_usd, count(*)::bigint as order_count {counted} "
        "group by all"
    )
    con.execute(
        f"create table analytics.daily_sales as select business_date as date, region, "
        f"category, cast({cents}) as total_sales_usd, count(*)::bigint as order_count "
        f"{counted} group by all"
    )
    con.close()
    return path


def _daily_sales_plus(path: Path, cents: str, day: date, region: str, category: str) -> None:
    con = duckdb.connect(str(path))
    con.execute(
        "update analytics.daily_sales set total_sales_usd = total_sales_usd + ? "
        "where date = ? and region = ? and category = ?",
        [Decimal(cents), day, region, category],
    )
    con.close()


def test_the_paths_agree(warehouse: Path) -> None:
    assert check_sales_parity(warehouse) == {
        "sales_summary_rows": 3,
        "daily_sales_rows": 4,
        "days_checked": 2,
        "mismatches": 0,
    }


def test_one_cent_off_names_the_date_region_category_and_both_values(warehouse: Path) -> None:
    _daily_sales_plus(warehouse, "0.01", D1, "US", "games")
    with pytest.raises(ParityError) as err:
        check_sales_parity(warehouse)
    message = str(err.value)
    assert "disagree on 1 (date, region) row(s)" in message
    assert "2026-03-07 'US': order_count etl=2 elt=2; total_sales_usd etl=27.51 elt=27.50" in (
        message
    )
    assert (
        "2026-03-07 'US' 'games': order_count daily_sales=1 dbt=1; "
        "total_sales_usd daily_sales=15.01 dbt=15.00"
    ) in message
    assert "'books'" not in message  # the categories that agree are not listed
    assert "Nothing was published" in message


def test_a_category_missing_on_one_side_is_named(warehouse: Path) -> None:
    con = duckdb.connect(str(warehouse))
    con.execute("delete from analytics.daily_sales where date = ? and region = 'EU'", [D1])
    con.close()
    with pytest.raises(ParityError) as err:
        check_sales_parity(warehouse)
    message = str(err.value)
    assert "2026-03-07 'EU': order_count etl=None elt=1" in message
    assert (
        "2026-03-07 'EU' 'books': order_count daily_sales=None dbt=1; "
        "total_sales_usd daily_sales=None dbt=7.00"
    ) in message


def test_without_the_dbt_marts_the_totals_alone_are_named(warehouse: Path) -> None:
    con = duckdb.connect(str(warehouse))
    con.execute("drop table marts.fct_orders")
    con.close()
    _daily_sales_plus(warehouse, "-0.01", D2, "US", "books")
    with pytest.raises(ParityError) as err:
        check_sales_parity(warehouse)
    message = str(err.value)
    assert "2026-03-08 'US': order_count etl=1 elt=1; total_sales_usd etl=0.99 elt=1.00" in message
    assert "by category" not in message
