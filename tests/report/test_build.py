"""The HTML report: day page, trend PNG, CSV and index, built from a tiny real warehouse."""

from __future__ import annotations

import csv
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from report.build import build_report

DAY = date(2026, 3, 7)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

DAILY_SALES = [
    ("2026-03-07", "EU", "books", "1234567.50", 3),
    ("2026-03-07", "EU", "games", "10.85", 1),
    ("2026-03-07", "<script>x</script>", "uncategorized", "0.05", 1),
    ("2026-03-06", "EU", "books", "5.00", 1),
    ("2026-01-01", "OLD", "books", "9.99", 1),  # outside the 30-day window
]
SALES_SUMMARY = [
    ("2026-03-07", "EU", "1234578.35", 4),
    ("2026-03-07", "<script>x</script>", "0.05", 1),
    ("2026-03-06", "EU", "5.00", 1),
    ("2026-01-01", "OLD", "9.99", 1),
]
RUN_STATS = {
    "extracted": {"orders": 12345, "users": 7},
    "quarantined": {"payments": 1},
    "published": {"sales_summary": 40, "daily_sales": 200},
    "run_id": "2026-03-07",
    "generated_at": "2026-03-08T03:00:00+00:00",
}


def make_warehouse(path: Path, daily: list[tuple], summary: list[tuple]) -> Path:
    with duckdb.connect(str(path)) as con:
        con.execute("create schema analytics")
        con.execute(
            "create table analytics.daily_sales (date date, region varchar, category varchar,"
            " total_sales_usd decimal(18,2), order_count bigint)"
        )
        con.execute(
            "create table analytics.sales_summary (date date, region varchar,"
            " total_sales_usd decimal(18,2), order_count bigint)"
        )
        for row in daily:
            con.execute("insert into analytics.daily_sales values (?, ?, ?, ?, ?)", list(row))
        for row in summary:
            con.execute("insert into analytics.sales_summary values (?, ?, ?, ?)", list(row))
    return path


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    return make_warehouse(tmp_path / "warehouse.duckdb", DAILY_SALES, SALES_SUMMARY)


def test_day_page(warehouse: Path, tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    page = build_report(warehouse, report_dir, DAY, RUN_STATS)
    assert page == report_dir / "2026-03-07.html"
    html = page.read_text(encoding="utf-8")

    assert "2026-03-07" in html
    assert "<td>EU</td>" in html
    assert '<td class="num">1,234,578.35</td>' in html  # region total, from sales_summary
    assert '<td class="num">1,234,567.50</td>' in html  # books
    assert '<td class="num">0.05</td>' in html
    assert "1,234,578.40" in html  # the day's total sales
    assert "<td>books</td>" in html and "<td>uncategorized</td>" in html
    # Data is escaped, never injected.
    assert "<script>x</script>" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html
    # Run statistics, whatever the keys.
    assert "12,345" in html and "<td>payments</td>" in html and "<td>sales_summary</td>" in html
    assert "2026-03-08T03:00:00+00:00" in html
    # No reconciliation warning when the two tables agree.
    assert "disagree" not in html

    png = report_dir / "2026-03-07-trend.png"
    assert '<img src="2026-03-07-trend.png"' in html
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000

    with (report_dir / "2026-03-07.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["date", "region", "category", "total_sales_usd", "order_count"],
        ["2026-03-07", "<script>x</script>", "uncategorized", "0.05", "1"],
        ["2026-03-07", "EU", "books", "1234567.50", "3"],
        ["2026-03-07", "EU", "games", "10.85", "1"],
    ]
    assert '<a href="2026-03-07.csv">' in html
    assert not list(report_dir.glob(".*"))  # no temp files left behind


def test_index_lists_every_day_newest_first(warehouse: Path, tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    build_report(warehouse, report_dir, date(2026, 3, 6), RUN_STATS)
    build_report(warehouse, report_dir, DAY, RUN_STATS)
    build_report(warehouse, report_dir, date(2026, 1, 1), {})
    index = (report_dir / "index.html").read_text(encoding="utf-8")
    links = ['href="2026-03-07.html"', 'href="2026-03-06.html"', 'href="2026-01-01.html"']
    positions = [index.index(link) for link in links]
    assert positions == sorted(positions)
    assert 'href="2026-03-07.csv"' in index


def test_day_without_data_says_so(warehouse: Path, tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    page = build_report(warehouse, report_dir, date(2026, 3, 9), {"run_id": "2026-03-09"})
    html = page.read_text(encoding="utf-8")
    assert "No sales for 2026-03-09" in html
    assert "By region" not in html
    assert (report_dir / "2026-03-09-trend.png").read_bytes()[:8] == PNG_MAGIC
    assert (report_dir / "2026-03-09.csv").read_text() == (
        "date,region,category,total_sales_usd,order_count\n"
    )
    assert 'href="2026-03-09.html"' in (report_dir / "index.html").read_text()


def test_empty_warehouse_tables(tmp_path: Path) -> None:
    warehouse = make_warehouse(tmp_path / "empty.duckdb", [], [])
    html = build_report(warehouse, tmp_path / "r", DAY, {}).read_text()
    assert "No sales for 2026-03-07" in html
    assert "No run statistics were provided." in html


def test_disagreement_between_tables_is_flagged(tmp_path: Path) -> None:
    summary = [("2026-03-07", "EU", "1234578.36", 4), *SALES_SUMMARY[1:]]
    warehouse = make_warehouse(tmp_path / "w.duckdb", DAILY_SALES, summary)
    html = build_report(warehouse, tmp_path / "r", DAY, {}).read_text()
    assert "disagree for region(s): EU" in html


def test_warehouse_is_left_closed(warehouse: Path, tmp_path: Path) -> None:
    build_report(warehouse, tmp_path / "r", DAY, RUN_STATS)
    # A writer can open the file right after: the report's read-only connection is closed.
    with duckdb.connect(str(warehouse)) as con:
        total = con.execute(
            "select sum(total_sales_usd) from analytics.daily_sales where date = ?", [DAY]
        ).fetchone()
    assert total == (Decimal("1234578.40"),)


def test_odd_region_names_do_not_break_the_chart(tmp_path: Path) -> None:
    daily = [
        ("2026-03-07", "$x^{$", "books", "1.00", 1),
        ("2026-03-07", "_hidden", "books", "2.00", 1),
    ]
    summary = [("2026-03-07", "$x^{$", "1.00", 1), ("2026-03-07", "_hidden", "2.00", 1)]
    warehouse = make_warehouse(tmp_path / "w.duckdb", daily, summary)
    html = build_report(warehouse, tmp_path / "r", DAY, {}).read_text()
    assert "$x^{$" in html and "_hidden" in html
    assert (tmp_path / "r" / "2026-03-07-trend.png").read_bytes()[:8] == PNG_MAGIC


def test_comparisons_movers_restatement_and_status(tmp_path: Path) -> None:
    """Day-over-day / week-over-week, movers, a restated day's page rebuilt with a banner."""
    import json as _json
    from datetime import date as _date

    import duckdb as _duckdb

    from report.build import build_report as _build

    wh = tmp_path / "wh.duckdb"
    con = _duckdb.connect(str(wh))
    con.execute("create schema analytics; create schema ops; create schema raw")
    con.execute(
        "create table analytics.sales_summary (date date, region varchar, "
        "total_sales_usd decimal(18,2), order_count bigint)"
    )
    con.execute(
        "create table analytics.daily_sales (date date, region varchar, category varchar, "
        "total_sales_usd decimal(18,2), order_count bigint)"
    )
    rows = [
        ("2026-11-13", "north", "books", "100.00", 1),
        ("2026-11-19", "north", "books", "200.00", 2),
        ("2026-11-20", "north", "books", "150.00", 1),
        ("2026-11-20", "north", "toys", "90.00", 1),
    ]
    for d, r, c, t, n in rows:
        con.execute("insert into analytics.daily_sales values (?, ?, ?, ?, ?)", [d, r, c, t, n])
    con.execute(
        "insert into analytics.sales_summary select date, region, sum(total_sales_usd), "
        "sum(order_count) from analytics.daily_sales group by all"
    )
    con.execute(
        "create table ops.restated_days (run_id varchar, business_date date, reason varchar)"
    )
    con.execute(
        "create table ops.quality_results (run_id varchar, severity varchar, success boolean)"
    )
    con.execute(
        "insert into ops.quality_results values ('2026-11-20', 'critical', true), "
        "('2026-11-20', 'warning', false)"
    )
    con.execute("create table raw.orders (updated_at timestamptz)")
    con.execute("insert into raw.orders values ('2026-11-20 23:00:00+00')")
    con.close()

    out = tmp_path / "report"
    _build(wh, out, _date(2026, 11, 19), {"run_id": "2026-11-19", "extracted": {"orders": 2}})
    first = (out / "2026-11-19.html").read_text()
    assert "Restated" not in first

    con = _duckdb.connect(str(wh))
    con.execute("insert into ops.restated_days values ('2026-11-20', '2026-11-19', 'late_order')")
    con.close()
    page = _build(wh, out, _date(2026, 11, 20), {"run_id": "2026-11-20"}).read_text()
    assert "+20.0%" in page  # 240 vs 200 the previous day
    assert "+140.0%" in page  # 240 vs 100 the same day last week
    assert "Categories that moved most" in page and "toys" in page
    assert "1 warning(s) in 2 checks" in page and "passed" in page
    assert "2026-11-20 23:00:00 UTC" in page

    rebuilt = (out / "2026-11-19.html").read_text()
    assert "Restated" in rebuilt and "late_order" in rebuilt and "2026-11-20" in rebuilt
    # the rebuilt page kept its own run statistics
    assert _json.loads((out / "2026-11-19.json").read_text())["extracted"] == {"orders": 2}
    assert "orders" in rebuilt


def test_csv_cells_that_start_like_a_formula_are_not_formulas(tmp_path: Path) -> None:
    """A region or category a spreadsheet would run (`=cmd|...`, `+`, `-`, `@`) is
    written with a leading quote; anything else is written as it is."""
    daily = [
        (DAY, '=HYPERLINK("http://x")', "@sum", Decimal("1.00"), 1),
        (DAY, "-west", "+books", Decimal("2.00"), 1),
        (DAY, "EU", "books-2", Decimal("3.00"), 1),
    ]
    summary = [(DAY, r, t, n) for _, r, _, t, n in daily]
    warehouse = make_warehouse(tmp_path / "w.duckdb", daily, summary)
    build_report(warehouse, tmp_path / "report", DAY, RUN_STATS)
    with (tmp_path / "report" / "2026-03-07.csv").open(newline="", encoding="utf-8") as f:
        cells = [(r[1], r[2]) for r in list(csv.reader(f))[1:]]
    assert sorted(cells) == sorted(
        [('\'=HYPERLINK("http://x")', "'@sum"), ("'-west", "'+books"), ("EU", "books-2")]
    )
