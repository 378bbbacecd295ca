"""`make query`: read-only SQL on the published warehouse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb

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
