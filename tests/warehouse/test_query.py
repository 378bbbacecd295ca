"""`make query`: read-only SQL on the published warehouse."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create schema analytics")
    con.execute(
        "create table analytics.sales_summary as "
        "select date '2026-11-27' as date, 'north' as region, 12.34::decimal(18,2) as total_sales_usd"
    )
    con.close()
    return path


def _query(path: Path, sql: str | None, stdin: str = "") -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "warehouse.query", "--warehouse", str(path)]
    if sql:
        args += ["--sql", sql]
    return subprocess.run(args, input=stdin, capture_output=True, text=True, cwd=ROOT)


def test_one_statement_prints_its_result(tmp_path: Path) -> None:
    out = _query(
        _warehouse(tmp_path), "select region, total_sales_usd from analytics.sales_summary"
    )
    assert out.returncode == 0, out.stderr
    assert "north" in out.stdout and "12.34" in out.stdout


def test_the_shell_is_read_only(tmp_path: Path) -> None:
    path = _warehouse(tmp_path)
    out = _query(path, "drop table analytics.sales_summary")
    assert out.returncode == 1
    assert "read-only" in out.stderr
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("select count(*) from analytics.sales_summary").fetchone()[0] == 1
    con.close()


def test_interactive_statements_span_lines(tmp_path: Path) -> None:
    out = _query(_warehouse(tmp_path), None, stdin="select 40\n + 2 as answer;\nselect nope;\n")
    assert out.returncode == 0
    assert "answer" in out.stdout and "42" in out.stdout
    assert "error:" in out.stdout  # a bad statement is reported, the shell goes on


def test_missing_warehouse_says_what_to_do(tmp_path: Path) -> None:
    out = _query(tmp_path / "none.duckdb", "select 1")
    assert out.returncode != 0 and "make demo" in out.stderr


# --- docs/analyst-queries.md, run as `make query SQL=...` runs it ------------------------

ANALYST_PAGE = ROOT / "docs" / "analyst-queries.md"
SQL_BLOCK = re.compile(r"```sql\n(.*?)```", re.DOTALL)


def _analyst_queries() -> list[tuple[str, str]]:
    """(heading, sql) of every ```sql block on the page."""
    text = ANALYST_PAGE.read_text()
    queries = []
    for match in SQL_BLOCK.finditer(text):
        heading = re.findall(r"^## (.+)$", text[: match.start()], re.MULTILINE)[-1]
        queries.append((heading, match.group(1).strip()))
    return queries


@pytest.fixture(scope="module")
def demo_warehouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dt.date]:
    """The hand-made raw data of test_dbt_project moved to the last days, built by the dbt
    project (sales_summary, marts) and the transform (daily_sales), REPORT_TZ=UTC."""
    from tests.warehouse.test_dbt_project import RAW_SQL
    from transform.daily_sales import compute_daily_sales, publish_daily_sales
    from warehouse.dbt_runner import BuildPlan, dbt_build

    path = tmp_path_factory.mktemp("analyst") / "warehouse.duckdb"
    con = duckdb.connect(str(path))
    try:
        today = con.execute("select current_date").fetchone()[0]
        day1, day2 = today - dt.timedelta(days=3), today - dt.timedelta(days=2)
        con.execute(
            RAW_SQL.replace("2024-01-15", day1.isoformat())
            .replace("2024-01-16", day2.isoformat())
            .replace("2024-01-01", (today - dt.timedelta(days=30)).isoformat())
        )
    finally:
        con.close()
    dbt_build(path, BuildPlan("UTC"))
    publish_daily_sales(compute_daily_sales(path, "UTC", None), path)
    return path, today


def test_the_page_has_the_issues_questions() -> None:
    headings = " | ".join(h.lower() for h, _ in _analyst_queries())
    for question in ("sales by region, last week", "top 5 categories", "late-order share"):
        assert question in headings


@pytest.mark.parametrize("heading", [h for h, _ in _analyst_queries()])
def test_every_analyst_query_runs_on_a_built_warehouse(
    heading: str, demo_warehouse: tuple[Path, dt.date]
) -> None:
    sql = dict(_analyst_queries())[heading]
    out = _query(demo_warehouse[0], sql)
    assert out.returncode == 0, out.stderr
    assert not re.search(r"^\s*0 rows", out.stdout, re.MULTILINE), f"{heading}: no rows"


def test_late_order_share_counts_open_orders_two_days_old(
    demo_warehouse: tuple[Path, dt.date],
) -> None:
    path, today = demo_warehouse
    sql = dict(_analyst_queries())["Late-order share per day, last two weeks"]
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute(sql).fetchall()
    finally:
        con.close()
    # 3 days ago: #1 paid (late), #3 delivered, #4 shipped; #2 cancelled is not counted.
    # 2 days ago: #5, #6, #9, #10 paid and #7 pending (late), #11 refunded; #8 cancelled.
    assert rows == [
        (today - dt.timedelta(days=2), 5, 6, 83.3),
        (today - dt.timedelta(days=3), 1, 3, 33.3),
    ]
