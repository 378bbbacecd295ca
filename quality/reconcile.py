"""Reconciliation gates: what the source held is what landed, and what landed is what
the warehouse now holds.

Source -> landing (`SourceTotals`, `check_source_totals`): the extract totals the rows it
reads per table and business day with SQL in its own snapshot; the landed Parquet of the
run must give the same counts and money sums.

Landing -> warehouse (`reconcile_run`): after a run's landed files are merged into the build, every landed row must be in
`raw.<table>` with the same version (key and `updated_at`), and per business day (for
orders; per table for the rest) the counts and money sums of the landed rows and of
their merged copies must agree exactly. A mismatch fails the run with the numbers side
by side; nothing is published.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

# table -> (money expression or None, business-day column or None)
CHECKS: dict[str, dict[str, tuple[str | None, str | None]]] = {
    "source_db": {
        "orders": ("total", "created_at"),
        "order_items": ("quantity * unit_price", None),
        "products": ("price", None),
        "users": (None, None),
    },
    "payments_api": {
        "payments": ("amount", None),
    },
}


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


class ReconciliationError(RuntimeError):
    """Landed and merged rows disagree; the message lists both sides."""


def _landed_glob(landing_root: Path, source: str, table: str, run_id: str) -> list[str]:
    base = Path(landing_root) / source / table
    dirs = [base / f"run={run_id}", *sorted(base.glob(f"run={run_id}.shard-*"))]
    return [str(d / "*.parquet") for d in dirs if d.is_dir() and any(d.glob("*.parquet"))]


def reconcile_run(
    con: Any, landing_root: Path, source: str, run_id: str, report_tz: str
) -> dict[str, int]:
    """Compare the run's landed rows with `raw` in the (open) build connection."""
    checked: dict[str, int] = {}
    problems: list[str] = []
    for table, (money, day_column) in CHECKS[source].items():
        files = _landed_glob(landing_root, source, table, run_id)
        if not files:
            continue
        money_sql = f"coalesce(sum({money}), 0)" if money else "0"
        day_sql = (
            f"cast(timezone($tz, {day_column}) as date)" if day_column else "cast(null as date)"
        )
        rows = con.execute(
            f"""
            with landed as (
                select * from read_parquet($files, union_by_name = true, hive_partitioning = false)
            ),
            merged as (
                select r.* from raw."{table}" r
                semi join landed l on r.id = l.id and r.updated_at is not distinct from l.updated_at
            ),
            a as (select {day_sql} as day, count(*) as n, {money_sql} as money from landed group by 1),
            b as (select {day_sql} as day, count(*) as n, {money_sql} as money from merged group by 1)
            select coalesce(a.day, b.day), a.n, b.n, a.money, b.money
            from a full outer join b on a.day is not distinct from b.day
            where a.n is distinct from b.n or a.money is distinct from b.money
            order by 1 nulls first
            """,
            {"files": files, "tz": report_tz} if day_column else {"files": files},
        ).fetchall()
        checked[table] = con.execute(
            "select count(*) from read_parquet($files, union_by_name = true, hive_partitioning = false)",
            {"files": files},
        ).fetchone()[0]
        for day, landed_n, merged_n, landed_money, merged_money in rows[:10]:
            where = f"business day {day}" if day is not None else "all rows"
            problems.append(
                f"{source}.{table} {where}: landed {landed_n or 0} rows / {landed_money or 0} "
                f"vs warehouse {merged_n or 0} rows / {merged_money or 0}"
            )
    if problems:
        raise ReconciliationError(
            f"run {run_id}: landed rows and the warehouse disagree:\n  " + "\n  ".join(problems)
        )
    return checked


# --------------------------------------------------------------------------------------
# Source -> landing: what the source held, in the extract's own snapshot, per business day

# table -> (columns multiplied into the money sum, or None; business-day column)
SOURCE_CHECKS: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "orders": (("total",), "created_at"),
    "order_items": (("quantity", "unit_price"), "updated_at"),
    "products": (("price",), "updated_at"),
    "users": (None, "updated_at"),
}
SOURCE_TOTALS_DIR = "_source_totals"  # not a table: per-run records beside the landed tables
SOURCE_SUITE = "reconcile.source_to_landing"
_TZ_BIND = "nightshift_report_tz"


def source_totals_path(landing_root: Path, run_id: str) -> Path:
    """Where a run's source totals are recorded (`<landing>/source_db/_source_totals/`)."""
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise ValueError(f"invalid run id {run_id!r}")
    return Path(landing_root) / "source_db" / SOURCE_TOTALS_DIR / f"run={run_id}.json"


class SourceTotals:
    """The `aggregates` hook of `extract.db_extract.extract_tables`: totals what it reads.

    It wraps each table's reader: before a checked table's rows are streamed, the same
    filter (`where_sql`: the run's cursor window and shard predicate, bound parameters)
    is aggregated per business day with SQL on the same connection, inside the
    extract's snapshot transaction, so a source that changes afterwards cannot make the
    numbers disagree. PostgreSQL only (`timezone()` with IANA names); other databases
    are recorded as not checked. Thread-safe: every shard adds to the same totals.
    """

    def __init__(self, report_tz: str) -> None:
        self.report_tz = report_tz
        self._lock = threading.Lock()
        self.tables: dict[str, dict[str | None, list]] = {}
        self.unchecked: dict[str, str] = {}  # table -> why

    def __call__(self, reader: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def read(
            conn: Any,
            table: Any,
            schema: Any,
            where_sql: str | None,
            params: dict[str, Any],
            batch_size: int,
        ) -> Iterator[Any]:
            if table.name in SOURCE_CHECKS:
                self._add(conn, table, where_sql, params)
            yield from reader(conn, table, schema, where_sql, params, batch_size)

        return read

    def _add(self, conn: Any, table: Any, where_sql: str | None, params: dict[str, Any]) -> None:
        import sqlalchemy as sa

        if conn.dialect.name != "postgresql":
            with self._lock:
                self.unchecked[table.name] = f"{conn.dialect.name}: no IANA time zones in SQL"
            return
        money_columns, day_column = SOURCE_CHECKS[table.name]
        quote = conn.dialect.identifier_preparer.quote
        day = quote(day_column)
        if not getattr(table.c[day_column].type, "timezone", False):
            day = f"timezone('UTC', {day})"  # naive columns hold UTC (contract)
        money = " * ".join(quote(c) for c in money_columns) if money_columns else "0"
        relation = conn.dialect.identifier_preparer.format_table(table)
        sql = (
            f"select cast(timezone(:{_TZ_BIND}, {day}) as date) as business_day, "
            f"count(*) as row_count, sum({money}) as money from {relation}"
            + (f" where {where_sql}" if where_sql else "")
            + " group by 1"
        )
        rows = conn.execute(sa.text(sql), {**params, _TZ_BIND: self.report_tz}).fetchall()
        with self._lock:
            days = self.tables.setdefault(table.name, {})
            for business_day, count, total in rows:
                key = None if business_day is None else business_day.isoformat()
                entry = days.setdefault(key, [0, None])
                entry[0] += int(count)
                if total is not None:
                    entry[1] = Decimal(total) + (entry[1] or 0)

    def record(self, run_id: str) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "report_tz": self.report_tz,
            "unchecked": dict(self.unchecked),
            "tables": {
                name: [
                    {"day": d, "rows": n, "money": None if m is None else str(m)}
                    for d, (n, m) in sorted(days.items(), key=lambda x: (x[0] is not None, x[0]))
                ]
                for name, days in self.tables.items()
                if name not in self.unchecked
            },
        }


def clear_source_totals(landing_root: Path, run_id: str) -> None:
    """Drop an earlier attempt's record before extracting again (it would not match)."""
    source_totals_path(landing_root, run_id).unlink(missing_ok=True)


def write_source_totals(landing_root: Path, run_id: str, totals: SourceTotals) -> Path:
    """Record the run's source totals atomically, after every table has landed."""
    path = source_totals_path(landing_root, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(totals.record(run_id), indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def _landed_totals(
    con: Any, files: list[str], table: str, report_tz: str
) -> dict[str | None, tuple[int, Decimal | None]]:
    money_columns, day_column = SOURCE_CHECKS[table]
    money = " * ".join(f'"{c}"' for c in money_columns) if money_columns else "0"
    rows = con.execute(
        f"""
        select cast(timezone($tz, "{day_column}") as date), count(*), sum({money})
        from read_parquet($files, union_by_name = true, hive_partitioning = false)
        group by 1
        """,
        {"files": files, "tz": report_tz},
    ).fetchall()
    return {
        (None if d is None else d.isoformat()): (int(n), None if m is None else Decimal(m))
        for d, n, m in rows
    }


def _outcome(table: str, day_column: str, mismatches: list[dict], days: int, rows: int):
    from quality.validate import ExpectationOutcome

    return ExpectationOutcome(
        suite=SOURCE_SUITE,
        table=f"source_db.{table}",
        expectation="source_and_landing_agree_per_business_day",
        column=day_column,
        severity="critical",
        success=not mismatches,
        observed_value={"days": days, "source_rows": rows, "mismatched_days": len(mismatches)},
        unexpected_count=len(mismatches),
        element_count=days,
        samples=mismatches[:10],
    )


def check_source_totals(landing_root: Path, run_id: str, con: Any = None) -> Any:
    """Compare the run's recorded source totals with its landed Parquet, per business day.

    Returns a `quality.validate.SuiteResult` (one outcome per checked table; each
    mismatching day as a sample with both sides), or None when the run recorded none.
    """
    from quality.validate import SuiteResult

    path = source_totals_path(landing_root, run_id)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    own = con is None
    if own:
        import duckdb

        con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")
        outcomes = []
        for table, entries in record["tables"].items():
            source = {
                e["day"]: (e["rows"], None if e["money"] is None else Decimal(e["money"]))
                for e in entries
            }
            files = _landed_glob(landing_root, "source_db", table, run_id)
            landed = _landed_totals(con, files, table, record["report_tz"]) if files else {}
            mismatches = [
                {
                    "day": day,
                    "source_rows": source.get(day, (0, None))[0],
                    "landing_rows": landed.get(day, (0, None))[0],
                    "source_money": str(source.get(day, (0, None))[1]),
                    "landing_money": str(landed.get(day, (0, None))[1]),
                }
                for day in sorted(set(source) | set(landed), key=lambda d: (d is not None, d))
                if source.get(day, (0, None)) != landed.get(day, (0, None))
            ]
            rows = sum(n for n, _ in source.values())
            outcomes.append(_outcome(table, SOURCE_CHECKS[table][1], mismatches, len(source), rows))
    finally:
        if own:
            con.close()
    return SuiteResult(suite=SOURCE_SUITE, table="source_db", run_id=run_id, outcomes=outcomes)


def raise_for_source_mismatch(result: Any) -> None:
    """ReconciliationError listing every mismatching (table, day) with both sides."""
    lines = [
        f"{o.table} business day {s['day'] or '(no day)'}: source {s['source_rows']} rows / "
        f"{s['source_money']} vs landing {s['landing_rows']} rows / {s['landing_money']}"
        for o in result.outcomes
        if not o.success
        for s in o.samples
    ]
    if lines:
        raise ReconciliationError(
            f"run {result.run_id}: the landed rows differ from what the source held when the "
            "extract read it:\n  " + "\n  ".join(lines)
        )
