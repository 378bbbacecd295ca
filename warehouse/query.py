"""A read-only SQL shell on the published warehouse (`make query`).

    python -m warehouse.query                      # interactive; end statements with ';'
    python -m warehouse.query --sql "select ..."   # one statement, then exit

It runs on the configured warehouse (`warehouse.backends.backend_for`: the DuckDB file at
`WAREHOUSE_PATH`, or the PostgreSQL database of `AIRFLOW_CONN_WAREHOUSE`); `--warehouse
PATH` names a DuckDB file instead. Analysts write the published names
(`analytics.sales_summary`), which are the same on every backend.

It can never change the warehouse:

- DuckDB: a read-only connection. The nightly publishes by swapping the file
  (warehouse/publish.py), so the shell never blocks a run.
- PostgreSQL: every statement runs alone in its own `BEGIN READ ONLY` transaction
  (the session's `default_transaction_read_only` is on as well), sent as one prepared
  statement so a string of several statements (`...; commit; ...`) is refused, and
  rolled back afterwards. The publish swaps schemas under `lock_timeout`, so a long
  query here delays a publish by retries, never the other way round.

Results print as the same table on both: values rendered by Python (`str`, NULL for
NULL), numbers right-aligned, timestamps in UTC.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

PROMPT, MORE = "nightshift> ", "      ...> "
MAX_ROWS = 200
MAX_CELL = 80


class QueryError(Exception):
    """A statement failed (bad SQL, a write refused by the read-only connection...)."""


def _driver_errors() -> tuple[type[BaseException], ...]:
    import duckdb

    errors: list[type[BaseException]] = [duckdb.Error]
    try:
        import psycopg

        errors.append(psycopg.Error)
    except ImportError:  # pragma: no cover - psycopg is in the main venv
        pass
    return tuple(errors)


# -------------------------------------------------------------------------------------
# Read-only sessions on the published warehouse (also what the report reads through)


@contextmanager
def read_only_session(where: Any) -> Iterator[Any]:
    """A `Session` on the published warehouse that cannot write: a read-only connection
    to the DuckDB file (TimeZone UTC, as the backend's own reads), or one read-only
    transaction on the published PostgreSQL schemas. `where` is a Warehouse or a DuckDB
    file path. Every read inside sees one snapshot."""
    from warehouse.backends import as_warehouse
    from warehouse.backends.duckdb import DuckDBSession, DuckDBWarehouse

    wh = as_warehouse(where)
    if isinstance(wh, DuckDBWarehouse):
        con = wh.connect(read_only=True)  # TimeZone UTC, the warehouse's memory limit
        try:
            yield DuckDBSession(con, {s: s for s in wh.schemas})
        finally:
            con.close()
        return
    with wh.transaction(None) as session:
        if session.kind == "postgres":
            session.execute("set transaction read only")
        yield session


# -------------------------------------------------------------------------------------
# The shell's connections: one statement at a time, a table of Python values back


class _DuckDBShell:
    def __init__(self, warehouse: Any) -> None:
        if not Path(warehouse.path).exists():
            raise SystemExit(f"no warehouse at {warehouse.path}: run `make demo` or `make nightly`")
        self.con = warehouse.connect(read_only=True)  # TimeZone UTC, as the backend's reads

    def run(self, sql: str, limit: int) -> tuple[list[str], list[tuple], int] | None:
        cur = self.con.execute(sql)
        if cur.description is None:
            return None
        names = [d[0] for d in cur.description]
        rows = cur.fetchmany(limit)
        total = len(rows)
        while chunk := cur.fetchmany(10_000):
            total += len(chunk)
        return names, rows, total

    def close(self) -> None:
        self.con.close()


class _PostgresShell:
    def __init__(self, warehouse: Any) -> None:
        self.con = warehouse.connect(autocommit=True)  # timezone UTC, as the backend's reads
        self.con.execute("set default_transaction_read_only = on")

    def run(self, sql: str, limit: int) -> tuple[list[str], list[tuple], int] | None:
        self.con.execute("begin read only")
        try:
            with self.con.cursor() as cur:
                # prepared: the server takes one statement only, never `...; commit; ...`
                cur.execute(sql, prepare=True)
                if cur.description is None:
                    return None
                names = [d.name for d in cur.description]
                rows = cur.fetchmany(limit)
                total = len(rows)
                while chunk := cur.fetchmany(10_000):
                    total += len(chunk)
                return names, rows, total
        finally:
            self.con.execute("rollback")

    def close(self) -> None:
        self.con.close()


def connect(where: Any = None) -> Any:
    """The shell's read-only connection: `where` a DuckDB file path or a Warehouse;
    None is the configured warehouse (`backend_for`)."""
    from warehouse.backends import as_warehouse, backend_for
    from warehouse.backends.duckdb import DuckDBWarehouse

    wh = backend_for() if where is None else as_warehouse(where)
    if isinstance(wh, DuckDBWarehouse):
        return _DuckDBShell(wh)
    if wh.kind == "postgres":
        return _PostgresShell(wh)
    raise SystemExit(f"make query does not support the {wh.kind} warehouse yet")


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    text = str(value)
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def format_table(names: Sequence[str], rows: Sequence[tuple], total: int) -> str:
    """A box table of the rows (numbers right-aligned) and a `N rows` line."""
    cells = [[_text(v) for v in row] for row in rows]
    right = [any(_numeric(row[i]) for row in rows) for i in range(len(names))]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]

    def line(left: str, mid: str, end: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + end

    def row_text(values: Sequence[str], align: Sequence[bool]) -> str:
        parts = [
            v.rjust(w) if a else v.ljust(w) for v, w, a in zip(values, widths, align, strict=True)
        ]
        return "│ " + " │ ".join(parts) + " │"

    out = [line("┌", "┬", "┐"), row_text(names, [False] * len(names)), line("├", "┼", "┤")]
    out += [row_text(r, right) for r in cells]
    out.append(line("└", "┴", "┘"))
    count = f"{total} row" + ("" if total == 1 else "s")
    if total > len(rows):
        count += f" ({len(rows)} shown)"
    out.append(count)
    return "\n".join(out)


def run_statement(con: Any, sql: str) -> None:
    """Run one statement and print its result as a table."""
    try:
        result = con.run(sql, MAX_ROWS)
    except _driver_errors() as exc:
        raise QueryError(str(exc).strip()) from None
    if result is not None:  # statements without a result (e.g. SET) print nothing
        print(format_table(*result))


def query_rows(where: Any, sql: str) -> tuple[list[str], list[tuple]]:
    """Column names and every row of one read-only statement (for tests and scripts)."""
    con = connect(where)
    try:
        result = con.run(sql, sys.maxsize)
    finally:
        con.close()
    return ([], []) if result is None else (result[0], result[1])


def repl(con: Any) -> None:
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
            except QueryError as exc:
                print(f"error: {exc}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Read-only SQL on the published warehouse (a shell, or one --sql)."
    )
    parser.add_argument("--sql", help="one statement to run, then exit")
    parser.add_argument(
        "--warehouse", type=Path, default=None, help="a DuckDB file (default: configured)"
    )
    args = parser.parse_args(argv)
    con = connect(args.warehouse)
    try:
        if args.sql:
            try:
                run_statement(con, args.sql)
            except QueryError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            return 0
        repl(con)
        return 0
    finally:
        con.close()


if __name__ == "__main__":
    raise SystemExit(main())
