"""Reconciliation gates: what the source held is what landed, and what landed is what
the warehouse now holds.

Source -> landing (`SourceTotals`, `check_source_totals`): the extract totals the rows it
reads per table and business day with SQL in its own snapshot (PostgreSQL, MySQL/MariaDB,
SQLite); the landed Parquet of the run must give the same counts and money sums.

Landing -> warehouse (`reconcile_run`): after a run's landed files are merged into the build, every landed row must be in
`raw.<table>` with the same version (key and `updated_at`), and per business day (for
orders; per table for the rest) the counts and money sums of the landed rows and of
their merged copies must agree exactly. A mismatch fails the run with the numbers side
by side; nothing is published.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from core import run_ids
from core.files import write_json_atomic

if TYPE_CHECKING:
    from extract.db_extract import CursorWindow, Reader, ReadRequest

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


class ReconciliationError(RuntimeError):
    """Landed and merged rows disagree; the message lists both sides."""


def _landed_glob(landing_root: Path, source: str, table: str, run_id: str) -> list[str]:
    base = Path(landing_root) / source / table
    dirs = [base / run_ids.dir_name(run_id), *sorted(base.glob(run_ids.shard_dirs_glob(run_id)))]
    return [str(d / "*.parquet") for d in dirs if d.is_dir() and any(d.glob("*.parquet"))]


def _run_day_sql(day_column: str | None) -> str:
    return f"cast(timezone(?, {day_column}) as date)" if day_column else "cast(null as date)"


def _run_by_day(rows: list[tuple]) -> dict[Any, tuple[int, Any]]:
    return {day: (int(n), money) for day, n, money in rows}


def _landed_versions(
    files: list[str], money: str | None, day_column: str | None, report_tz: str
) -> tuple[dict[Any, tuple[int, Any]], Any]:
    """Per business day (count, money sum) of the landed Parquet, and its distinct
    (id, updated_at) versions as Arrow: read by an in-memory DuckDB of its own, under the
    warehouse's memory limit (a first night lands the whole history: DuckDB spills past
    the limit instead of growing)."""
    from warehouse.backends.duckdb import connect

    money_sql = f"coalesce(sum({money}), 0)" if money else "0"
    params = [report_tz] if day_column else []
    con = connect()
    try:
        con.execute(
            "create temp view landed as select * from read_parquet("
            + "["
            + ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            + "], union_by_name = true, hive_partitioning = false)"
        )
        totals = con.execute(
            f"select {_run_day_sql(day_column)}, count(*), {money_sql} from landed group by 1",
            params,
        ).fetchall()
        versions = con.sql("select distinct id, updated_at from landed").to_arrow_table()
    finally:
        con.close()
    return _run_by_day(totals), versions


def _warehouse_totals(
    session: Any,
    table: str,
    versions: Any,
    money: str | None,
    day_column: str | None,
    report_tz: str,
) -> dict[Any, tuple[int, Any]]:
    """Per business day (count, money sum) of the `raw` rows that are a landed version
    (same id and updated_at), through the session: the versions go into a temporary
    table (the engine's bulk insert) and are semi-joined there."""
    from warehouse.backends.base import quote_ident

    keys = "_reconcile_versions"
    columns = ", ".join(
        f"{quote_ident(f.name)} {session.column_type(f.type)}" for f in versions.schema
    )
    session.create_temp(keys, "", columns=columns)
    session.insert_arrow(quote_ident(keys), versions)
    money_sql = f"coalesce(sum({money}), 0)" if money else "0"
    # `=` on the id and a NULL-safe version match: a hash semi-join on PostgreSQL and on
    # DuckDB (an `or` of the two NULL cases made DuckDB mark-join every raw row: 3.4 s
    # instead of 0.14 s over 51M order items)
    rows = session.fetchall(
        f"select {_run_day_sql(day_column)}, count(*), {money_sql} "
        f"from {{raw}}.{quote_ident(table)} r where exists (select 1 from {quote_ident(keys)} l "
        "where r.id = l.id and r.updated_at is not distinct from l.updated_at) group by 1",
        [report_tz] if day_column else [],
    )
    session.execute(f"drop table {quote_ident(keys)}")  # on failure: the transaction's end
    return _run_by_day(rows)


def reconcile_run(
    con: Any, landing_root: Path, source: str, run_id: str, report_tz: str
) -> dict[str, int]:
    """Compare the run's landed rows with `raw` in the build: `con` is a `Session` of the
    build (any backend) or an open DuckDB connection to it.

    The landed side is aggregated by an in-memory DuckDB over the Parquet; the warehouse
    side by the warehouse itself (`{raw}` is the build's schema); the two are compared
    here, exactly (counts as integers, money as Decimal)."""
    from warehouse.backends.duckdb import as_session

    session = as_session(con)
    checked: dict[str, int] = {}
    problems: list[str] = []
    for table, (money, day_column) in CHECKS[source].items():
        files = _landed_glob(landing_root, source, table, run_id)
        if not files:
            continue
        landed, versions = _landed_versions(files, money, day_column, report_tz)
        merged = _warehouse_totals(session, table, versions, money, day_column, report_tz)
        checked[table] = sum(n for n, _ in landed.values())
        differ = sorted(
            (day for day in landed.keys() | merged.keys() if landed.get(day) != merged.get(day)),
            key=lambda day: (day is not None, day),
        )
        for day in differ[:10]:
            landed_n, landed_money = landed.get(day, (None, None))
            merged_n, merged_money = merged.get(day, (None, None))
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

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TO_SECONDS_1970 = 62_167_219_200  # MySQL/MariaDB to_seconds('1970-01-01 00:00:00')
_QUARTER = timedelta(minutes=15)
_MINUTE = timedelta(minutes=1)
_TICK = timedelta(microseconds=1)


def _suffix(column: str) -> str:
    """SQLite: the UTC offset written at the end of an ISO timestamp text ('' if none)."""
    return (
        f"case when substr({column}, -6) glob '[+-][0-9][0-9]:[0-9][0-9]' "
        f"then substr({column}, -6) when length({column}) > 10 "
        f"and substr({column}, -5) glob '[+-][0-9][0-9][0-9][0-9]' then substr({column}, -5) "
        f"when substr({column}, -1) in ('Z', 'z') then 'Z' else '' end"
    )


def _sqlite_instant(table: str, prefix: str, minute: int, zone: str) -> datetime:
    """The UTC instant of a SQLite timestamp prefix (`YYYY-MM-DD[ HH]`) at `minute`."""
    text = prefix if len(prefix) <= 10 else f"{prefix}:{minute:02d}"
    try:
        value = datetime.fromisoformat(text + (zone or ""))
    except ValueError as exc:
        raise ValueError(f"{table}: cannot read the timestamp {prefix!r}...: {exc}") from exc
    if value.tzinfo is None:  # the contract: source timestamps are UTC
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _minute_in_window(minute: str, zone: str, lo: datetime | None, hi: datetime) -> bool | None:
    """Whether every instant of a cursor's minute (a SQLite text prefix) is in (lo, hi]:
    True, False, or None when the minute holds a bound (its rows must be cut one by one)."""
    first = _sqlite_instant("cursor", minute[:13], int(minute[14:16] or 0), zone)
    last = first if len(minute) <= 10 else first + _MINUTE - _TICK
    if first > hi or (lo is not None and last <= lo):
        return False
    if (lo is None or first > lo) and last <= hi:
        return True
    return None


def _sqlite_data_version(conn: Any) -> int | None:
    """SQLite's count of commits by other connections (None on other databases)."""
    if conn.dialect.name != "sqlite":
        return None
    return conn.exec_driver_sql("pragma data_version").scalar()


def source_totals_path(landing_root: Path, run_id: str) -> Path:
    """Where a run's source totals are recorded (`<landing>/source_db/_source_totals/`)."""
    if not run_ids.is_valid(run_id):
        raise ValueError(f"invalid run id {run_id!r}")
    return Path(landing_root) / "source_db" / SOURCE_TOTALS_DIR / f"{run_ids.dir_name(run_id)}.json"


def _sqlite_money(table: Any, quote: Callable[[str], str]) -> tuple[str, int]:
    """SQLite: the money product as an exact integer SQL expression, and its scale (each
    non-integer column as `round(x * 10^scale)`, its scale as the extract lands it:
    extract.db_extract.arrow_type)."""
    import sqlalchemy as sa

    scale = 0
    factors = []
    for name in SOURCE_CHECKS[table.name][0] or ():
        column_type = table.c[name].type
        if isinstance(column_type, sa.Integer):
            factors.append(quote(name))
            continue
        digits = column_type.scale if getattr(column_type, "scale", None) is not None else 10
        scale += digits
        factors.append(f"cast(round({quote(name)} * {10**digits}) as integer)")
    return (" * ".join(factors) if factors else "0"), scale


def _sqlite_minute_key(cursor: str, window: CursorWindow, binds: dict[str, Any]) -> str:
    """SQLite: the cursor's minute text and offset as two group keys, null for rows
    surely inside the window (binds its text bounds into `binds`).

    The cursor's minute decides whether a group was read. Rows surely inside the window
    need none: a text date from lo's date + 2 up to hi's date - 2 (compared as text, like
    `_window_where`) is inside (lo, hi] at any offset."""
    _, lo, hi = window
    inside = [f"{cursor} < :{_TZ_BIND}_hi"]
    binds[f"{_TZ_BIND}_hi"] = (hi - timedelta(days=1)).date().isoformat()
    if lo is not None:
        inside.append(f"{cursor} >= :{_TZ_BIND}_lo")
        binds[f"{_TZ_BIND}_lo"] = (lo + timedelta(days=2)).date().isoformat()
    surely = " and ".join(inside)
    return (
        f"case when {surely} then null else substr({cursor}, 1, 16) end, "
        f"case when {surely} then null else {_suffix(cursor)} end"
    )


def _add_cut_minutes(
    conn: Any,
    edge_sql: Any,
    params: dict[str, Any],
    minutes: list[tuple],
    window: CursorWindow,
    totals: _DayTotals,
) -> None:
    """SQLite: the rows of the cursor minutes that hold a window bound, one by one, kept
    as the extract keeps them (its own reading of the cursor, in (lo, hi])."""
    from extract.db_extract import _to_utc

    _, lo, hi = window
    for minute, minute_zone in minutes:
        binds = {**params, f"{_TZ_BIND}_m": minute, f"{_TZ_BIND}_z": minute_zone}
        for *key, value, amount in conn.execute(edge_sql, binds):
            instant = _to_utc(value)
            if instant <= hi and (lo is None or instant > lo):
                totals.add(tuple(key), 1, amount)


class _DayTotals:
    """Rows and money (an integer at the money's scale) per business day; the day of
    each group key is read once."""

    def __init__(self, day_of: Callable[[tuple], str | None]) -> None:
        self._day_of = day_of
        self._days: dict[tuple, str | None] = {}
        self._totals: dict[str | None, list] = {}

    def add(self, key: tuple, count: int, total: int | None) -> None:
        if key not in self._days:
            self._days[key] = self._day_of(key)
        entry = self._totals.setdefault(self._days[key], [0, None])
        entry[0] += count
        if total is not None:
            entry[1] = total + (entry[1] or 0)

    def rows(self, scale: int) -> list[tuple[str | None, int, Decimal | None]]:
        return [
            (day, n, None if m is None else Decimal(m).scaleb(-scale))
            for day, (n, m) in self._totals.items()
        ]


class SourceTotals:
    """The `aggregates` hook of the extract (`extract.db_extract.ReadHook`): totals what
    it reads.

    It wraps each table's reader: before a checked table's rows are streamed, the same
    filter (the `ReadRequest`'s `where_sql`: the run's cursor window and shard
    predicate, bound parameters)
    is aggregated with SQL on the same connection, inside the extract's snapshot
    transaction, so a source that changes afterwards cannot make the numbers disagree.
    Thread-safe: every shard of a sharded run adds to the same totals.

    Per database (the business day is the day column's instant in REPORT_TZ, DST and all):

    - PostgreSQL: grouped by `timezone(REPORT_TZ, day)::date` in SQL (IANA names).
    - MySQL/MariaDB: no reliable time zones in SQL (named zones need the tz tables), so
      the SQL groups by UTC quarter-hour, `to_seconds(day) div 900` (date arithmetic on
      the value as the reader gets it: no zone conversion; fractions dropped, which
      keeps an instant in its quarter), and Python maps each quarter to its day with
      zoneinfo. Exact because every UTC offset of a real zone is a whole number of
      quarter-hours: a quarter never straddles local midnight (checked; it would
      raise, not guess). DECIMAL sums are exact. The extract's REPEATABLE READ transaction holds one InnoDB read view for
      every statement, so these totals and the streamed rows see the same rows.
    - SQLite: timestamps are ISO text (naive UTC, or with `Z`/`+HH:MM`); its date
      functions round fractions to milliseconds (`...:59.9996` would move to the next
      quarter), so the SQL groups by the text itself: the hour prefix, the minute's
      quarter and the offset suffix; Python reads each group's instant. Money is REAL
      there (NUMERIC affinity): a SQL sum would be float, so each value is summed as
      an integer of its column's scale, `cast(round(x * 10^scale) as integer)` - exact,
      because the landed value must be exactly `x` at that scale (the extract refuses
      any other) and `x * 10^scale` is within half a unit of that integer for any
      amount below 2^50 units. The SQL window filter is only a superset on SQLite
      (day prefixes): the hook gets the exact bounds (the `ReadRequest`'s `window`), groups
      rows within two days of a bound by the cursor's minute as well, and reads the rows of the
      minutes that hold a bound one by one, cut exactly as the extract cuts them.
      The extract reads SQLite in one explicit transaction (a snapshot); on a
      connection outside one (pysqlite's default runs each SELECT in autocommit) a
      commit by another connection between the totals and the read is seen by
      `PRAGMA data_version`, and that table is then recorded as not checked for the
      run rather than failing it with a false alarm.

    Other databases, and money columns of floating type (never compared), are recorded
    as not checked.
    """

    def __init__(self, report_tz: str) -> None:
        self.report_tz = report_tz
        self._zone = ZoneInfo(report_tz)
        self._lock = threading.Lock()
        self.tables: dict[str, dict[str | None, list]] = {}
        self.unchecked: dict[str, str] = {}  # table -> why

    def __call__(self, reader: Reader, /) -> Reader:
        def read(conn: Any, request: ReadRequest, /) -> Iterator[Any]:
            name = request.table.name
            if name not in SOURCE_CHECKS:
                yield from reader(conn, request)
                return
            version = _sqlite_data_version(conn)
            self._add(conn, request)
            started = False
            for batch in reader(conn, request):
                if not started:  # the read's statement runs: its rows are fixed now
                    started = True
                    self._same_data(conn, name, version)
                yield batch
            if not started:
                self._same_data(conn, name, version)

        return read

    def _same_data(self, conn: Any, table: str, version: int | None) -> None:
        """SQLite outside a transaction (pysqlite runs SELECTs in autocommit): another
        connection may commit between the totals and the read. `PRAGMA data_version` tells; then
        the table is not compared in this run (a false alarm would fail it)."""
        if version is not None and _sqlite_data_version(conn) != version:
            with self._lock:
                self.unchecked[table] = (
                    "sqlite: the source changed between the totals and the read (no snapshot)"
                )

    def _add(self, conn: Any, request: ReadRequest) -> None:
        """Totals the rows `request` reads (its filter and, on SQLite, its exact window)."""
        import sqlalchemy as sa

        table, where_sql, params = request.table, request.where_sql, request.params
        dialect = conn.dialect.name
        money_columns = SOURCE_CHECKS[table.name][0] or ()
        floats = [c for c in money_columns if isinstance(table.c[c].type, sa.Float)]
        why = None
        if dialect not in ("postgresql", "mysql", "mariadb", "sqlite"):
            why = f"{dialect}: no exact per-day totals for this database"
        elif floats:
            why = f"money column(s) {', '.join(floats)} are floating point: not compared"
        if why is not None:
            with self._lock:
                self.unchecked[table.name] = why
            return
        if dialect == "postgresql":
            rows = self._postgres(conn, table, where_sql, params)
        elif dialect == "sqlite":
            rows = self._sqlite(conn, request)
        else:
            rows = self._mysql(conn, table, where_sql, params)
        with self._lock:
            days = self.tables.setdefault(table.name, {})
            for key, count, total in rows:
                entry = days.setdefault(key, [0, None])
                entry[0] += int(count)
                if total is not None:
                    entry[1] = Decimal(total) + (entry[1] or 0)

    def _sql(self, conn: Any, table: Any, select: str, where_sql: str | None, tail: str) -> str:
        relation = conn.dialect.identifier_preparer.format_table(table)
        where = f" where {where_sql}" if where_sql else ""
        return f"select {select} from {relation}{where} {tail}"

    def _postgres(self, conn: Any, table: Any, where_sql: str | None, params: dict) -> list:
        import sqlalchemy as sa

        money_columns, day_column = SOURCE_CHECKS[table.name]
        quote = conn.dialect.identifier_preparer.quote
        day = quote(day_column)
        if not getattr(table.c[day_column].type, "timezone", False):
            day = f"timezone('UTC', {day})"  # naive columns hold UTC (contract)
        money = " * ".join(quote(c) for c in money_columns) if money_columns else "0"
        sql = self._sql(
            conn,
            table,
            f"cast(timezone(:{_TZ_BIND}, {day}) as date), count(*), sum({money})",
            where_sql,
            "group by 1",
        )
        rows = conn.execute(sa.text(sql), {**params, _TZ_BIND: self.report_tz}).fetchall()
        return [(None if d is None else d.isoformat(), n, m) for d, n, m in rows]

    def _mysql(self, conn: Any, table: Any, where_sql: str | None, params: dict) -> list:
        import sqlalchemy as sa

        money_columns, day_column = SOURCE_CHECKS[table.name]
        quote = conn.dialect.identifier_preparer.quote
        money = " * ".join(quote(c) for c in money_columns) if money_columns else "0"
        sql = self._sql(
            conn,
            table,
            f"to_seconds({quote(day_column)}) div 900, count(*), sum({money})",
            where_sql,
            "group by 1",
        )
        out = []
        for quarter, count, total in conn.execute(sa.text(sql), params).fetchall():
            if quarter is None:
                out.append((None, count, total))
                continue
            start = _EPOCH + timedelta(seconds=int(quarter) * 900 - _TO_SECONDS_1970)
            out.append((self._day(table.name, start, _QUARTER), count, total))
        return out

    def _sqlite(self, conn: Any, request: ReadRequest) -> list:
        """(day, rows, money) of a SQLite table's filtered rows: grouped by the text of the
        day column (and of the cursor's minute near the window's bounds), the minutes that
        hold a bound read row by row (see the class docstring)."""
        import sqlalchemy as sa

        table, where_sql, params = request.table, request.where_sql, request.params
        window = request.window
        quote = conn.dialect.identifier_preparer.quote
        money, scale = _sqlite_money(table, quote)
        d = quote(SOURCE_CHECKS[table.name][1])
        day_key = f"substr({d}, 1, 13), cast(substr({d}, 15, 2) as integer) / 15, {_suffix(d)}"
        binds = dict(params)
        cursor = None if window is None else quote(window[0])
        minute_key = "null, null" if window is None else _sqlite_minute_key(cursor, window, binds)
        sql = self._sql(
            conn,
            table,
            f"{day_key}, {minute_key}, count(*), sum({money})",
            where_sql,
            "group by 1, 2, 3, 4, 5",
        )
        totals = _DayTotals(lambda key: self._sqlite_day(table.name, *key))
        minutes: dict[tuple, bool | None] = {}  # a cursor minute: in, out, or holding a bound
        for *key, minute, minute_zone, count, total in conn.execute(sa.text(sql), binds):
            if minute is not None:
                if (minute, minute_zone) not in minutes:
                    _, lo, hi = window
                    minutes[minute, minute_zone] = _minute_in_window(minute, minute_zone, lo, hi)
                if not minutes[minute, minute_zone]:  # out, or cut below row by row
                    continue
            totals.add(tuple(key), count, total)
        cut = [m for m, inside in minutes.items() if inside is None]
        if cut:
            edge = f"substr({cursor}, 1, 16) = :{_TZ_BIND}_m and {_suffix(cursor)} = :{_TZ_BIND}_z"
            where = f"({where_sql}) and {edge}" if where_sql else edge
            edge_sql = sa.text(self._sql(conn, table, f"{day_key}, {cursor}, {money}", where, ""))
            _add_cut_minutes(conn, edge_sql, params, cut, window, totals)
        return totals.rows(scale)

    def _sqlite_day(
        self, table: str, hour: str | None, quarter: int | None, zone: str
    ) -> str | None:
        if hour is None:
            return None
        start = _sqlite_instant(table, hour, (quarter or 0) * 15, zone)
        return self._day(table, start, timedelta(0) if len(hour) <= 10 else _QUARTER)

    def _day(self, table: str, start: datetime, span: timedelta) -> str:
        """Business day of the instants [start, start + span); they must share one."""
        day = start.astimezone(self._zone).date()
        if span and (start + span - _TICK).astimezone(self._zone).date() != day:
            raise ReconciliationError(
                f"{table}: the quarter-hour from {start.isoformat()} spans two business "
                f"days in {self.report_tz}: cannot total it per day"
            )
        return day.isoformat()

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
    return write_json_atomic(source_totals_path(landing_root, run_id), totals.record(run_id))


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
        from warehouse.backends.duckdb import connect

        con = connect()  # per-day sums over the landed Parquet, under the memory limit
    try:
        con.execute("set TimeZone = 'UTC'")  # also on a connection passed in
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
