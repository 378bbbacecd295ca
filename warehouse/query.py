"""A read-only SQL shell on the published warehouse (`make query`).

    python -m warehouse.query                      # interactive; end statements with ';'
    python -m warehouse.query --sql "select ..."   # one statement, then exit

The connection is read-only: it can never change the warehouse, and because the nightly
run publishes by swapping the file (warehouse/publish.py) it never blocks the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb

from pipeline import settings

PROMPT, MORE = "nightshift> ", "      ...> "


def connect(warehouse_path: Path) -> duckdb.DuckDBPyConnection:
    if not Path(warehouse_path).exists():
        raise SystemExit(f"no warehouse at {warehouse_path}: run `make demo` or `make nightly`")
    return duckdb.connect(str(warehouse_path), read_only=True)


def run_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Run one statement and print its result as a table."""
    relation = con.sql(sql)
    if relation is not None:  # statements without a result (e.g. SET) return None
        relation.show(max_rows=200, max_width=200)


def repl(con: duckdb.DuckDBPyConnection) -> None:
    print("Read-only SQL on the warehouse. Tables: analytics.sales_summary, analytics.daily_sales.")
    print("End a statement with ';'. Ctrl-D to quit.")
    buffer: list[str] = []
    while True:
        try:
            line = input(MORE if buffer else PROMPT)
        except EOFError:
            print()
            return
        buffer.append(line)
        if line.rstrip().endswith(";"):
            sql = "\n".join(buffer)
            buffer = []
            try:
                run_statement(con, sql)
            except duckdb.Error as exc:
                print(f"error: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="read-only SQL on the published warehouse")
    parser.add_argument("--sql", help="one statement to run, then exit")
    parser.add_argument("--warehouse", type=Path, default=None)
    args = parser.parse_args(argv)
    con = connect(args.warehouse or settings.warehouse_path())
    try:
        if args.sql:
            try:
                run_statement(con, args.sql)
            except duckdb.Error as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            return 0
        repl(con)
        return 0
    finally:
        con.close()


if __name__ == "__main__":
    raise SystemExit(main())
