"""Extract the operational tables from any SQLAlchemy URL into the landing zone.

Incremental, as docs/extract-design.md says: every run reads all its tables in ONE
snapshot transaction (REPEATABLE READ where the database has it; an explicit BEGIN on
SQLite, whose driver would otherwise read in autocommit) and fixes its upper
bound U = the source's own clock first. Each incremental table lands the rows with
`W - overlap < cursor <= U`, W being the window end of the last run that was *loaded*
into the warehouse (`extract.watermark`); full-mode tables land everything. Tables
with `reconcile_deletes` also land, from the same snapshot, their key set's bucket
summaries (`<table>__key_ranges`) and the keys of the changed buckets (`<table>__keys`;
every key for a composite or non-integer key or a shard), see extract/key_check.py.
Rows are streamed in batches (bounded memory); types stay exact (NUMERIC stays decimal,
timestamps become UTC). The row reader is pluggable: `reader(conn, ReadRequest)`
(`read_batches`, `auto_read_batches`, `ExtractPlan.reader`).

Sharded sources (docs/sharding.md): `extract_sharded_source` reads every physical shard
of a virtual-shard map in parallel, each through `extract_tables` with its `ShardScope`
in the plan, in its own snapshot on its own database, restricted to the vshards the map gives it,
with its own watermark; vshards newly assigned to a shard are read without a lower
bound. Each shard lands as its own run (`run=<run_id>.shard-<name>`), and a run record
(`<landing>/source_db/_shard_runs/run=<run_id>.json`) is written only once every shard
has landed: the loader loads only complete sharded runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from core import clock, key_summary, run_ids
from core.files import write_json_atomic
from core.settings import future_tolerance_minutes, sqlalchemy_url
from extract import key_check
from extract.landing import (
    LandingOptions,
    LandingTarget,
    UnlandableValueError,
    write_landing_table,
)
from extract.replica import (
    NO_REPLICA,
    LagFn,
    OnLag,
    ReadChoice,
    choose_read_url,
    replica_safe_window_end,
    replication_lag_seconds,
)
from extract.shards import (
    PhysicalShard,
    Ranges,
    ShardMap,
    ShardMapError,
    ShardResult,
    extract_sharded,
    normalize_ranges,
    plan_shard_reads,
    shard_filter,
    shard_predicate,
    watermark_shard_key,
)
from extract.source_timeouts import (
    connect_args,
    install,
    label,
    raise_source_timeout,
    raise_statement_timeout,
)
from extract.sql_binds import bound_filter, driver_filter
from extract.tables import DEFAULT_TABLES, TableConfig
from extract.watermark import last_loaded_shard_map, last_watermark

if TYPE_CHECKING:
    from extract.pg_copy import CopyQuery

# (connection, table configs) -> (manifest fields, reason to read everything or None)
SourceCheckHook = Callable[
    [sa.Connection, Sequence[TableConfig]], tuple[dict[str, Any], str | None]
]

log = logging.getLogger(__name__)

SOURCE_NAME = "source_db"
# Parallel key ranges only pay off for large reads: a range under this many rows (by
# the planner's estimate) is not worth a connection and a snapshot import.
PARALLEL_MIN_ROWS = 250_000
SHARD_RUNS_DIR = "_shard_runs"  # not a table: the run records of sharded extracts
_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class SchemaError(RuntimeError):
    """The source table does not have a column the pipeline needs."""


class FutureCursorError(RuntimeError):
    """Source rows whose cursor is later than the run's upper bound U (the source's own
    clock) + `FUTURE_TOLERANCE_MINUTES`: stopped before anything is landed, naming the
    table, the count, sample keys and the newest value. Deterministic: not retried."""


FUTURE_SAMPLES = 5


# decimal128's most digits: a wider DECIMAL (MySQL's go to 65) lands as its exact text
MAX_DECIMAL_DIGITS = 38


def arrow_type(sa_type: sa.types.TypeEngine) -> pa.DataType:
    """Map a reflected SQLAlchemy column type to the exact Arrow type we land."""
    if isinstance(sa_type, sa.Boolean):
        return pa.bool_()
    if isinstance(sa_type, sa.Integer):
        return pa.int64()
    if isinstance(sa_type, sa.Float):  # MySQL's DOUBLE reflects as asdecimal: see _converter
        return pa.float64()
    if isinstance(sa_type, sa.Numeric):
        if (sa_type.precision or 0) > MAX_DECIMAL_DIGITS:
            return pa.string()
        precision = sa_type.precision or MAX_DECIMAL_DIGITS
        scale = sa_type.scale if sa_type.scale is not None else 10
        return pa.decimal128(min(max(precision, scale + 1), MAX_DECIMAL_DIGITS), scale)
    if isinstance(sa_type, sa.DateTime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(sa_type, sa.Date):
        return pa.date32()
    return pa.string()


def _to_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        value = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:  # the contract: source timestamps are UTC
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


_WIDE = Context(prec=80)  # the default context has 28 digits; decimal128 holds 38


def _to_text(value: Any) -> str | None:
    """A string column's value; a Decimal (a DECIMAL too wide for decimal128) in plain
    notation, every digit kept (never `1E+50`)."""
    if value is None:
        return None
    return format(value, "f") if isinstance(value, Decimal) else str(value)


def _converter(arrow: pa.DataType):
    if pa.types.is_timestamp(arrow):
        return _to_utc
    if pa.types.is_decimal(arrow):
        scale = arrow.scale
        quantum = Decimal(1).scaleb(-scale)

        def to_decimal(v: Any) -> Decimal | None:
            if v is None:
                return None
            d = v if isinstance(v, Decimal) else Decimal(str(v))
            q = d.quantize(quantum, context=_WIDE)  # numeric(30, 8): 30 digits > 28
            if q != d:
                raise ValueError(f"value {v!r} does not fit scale {scale}")
            return q

        return to_decimal
    if pa.types.is_string(arrow):
        return _to_text
    if pa.types.is_floating(arrow):  # a driver may hand a float column's values as Decimal
        return lambda v: None if v is None else float(v)
    if pa.types.is_date(arrow):
        return lambda v: None if v is None else (v.date() if isinstance(v, datetime) else v)
    return lambda v: v


class CursorWindow(NamedTuple):
    """The exact bounds a window read is cut to after the read: `lo < cursor <= hi` or
    a NULL cursor (`lo` None: no lower bound). The SQL filter can be a superset (SQLite
    compares day prefixes, `_window_where`), so a hook that totals rows needs these."""

    cursor: str
    lo: datetime | None
    hi: datetime


@dataclass(frozen=True)
class ReadRequest:
    """One read: the rows of `table` matching `where_sql`, as record batches of `schema`.

    `where_sql`: the row filter with `:name` placeholders bound to `params` (see
    extract/sql_binds.py), None for every row. `batch_size`: rows per batch (at most).
    `window`: the cursor window the extract cuts the read's rows to afterwards
    (`_exact_window`), None for a read without one (a full-mode table, a shard's full
    vshards, a key set); a reader need not apply it, a `ReadHook` that totals rows uses it.
    """

    table: sa.Table
    schema: pa.Schema
    where_sql: str | None
    params: dict[str, Any]
    batch_size: int
    window: CursorWindow | None = None


class Reader(Protocol):
    """Streams the rows a `ReadRequest` names on the run's connection, inside the run's
    snapshot: the generic reader, the PostgreSQL fast path, or a test's reader."""

    def __call__(
        self, conn: sa.Connection, request: ReadRequest, /
    ) -> Iterator[pa.RecordBatch]: ...


class ReadHook(Protocol):
    """Wraps each table's reader for one run (quality/reconcile.py `SourceTotals`): the
    wrapped reader is called with the run's connection and the read's `ReadRequest`
    (filter, bound parameters and cursor window), inside the run's snapshot, so it can
    total exactly the rows read."""

    def __call__(self, reader: Reader, /) -> Reader: ...


def read_batches(conn: sa.Connection, request: ReadRequest, /) -> Iterator[pa.RecordBatch]:
    """Default reader: a streamed SQLAlchemy select, any dialect, ordered by primary key.

    On PostgreSQL it lands what the COPY fast path lands (tests/extract/
    test_reader_agreement.py): a column landed as text whose source type is not text
    (json/jsonb, arrays, bytea, interval, time, uuid, ...) is read as the server's text,
    not as the driver's Python object; `timestamptz` is read at UTC (no session time
    zone can push year 1 or 9999 out of range). A value that cannot be landed fails
    naming the table, the column and the row's key (a date or timestamp outside the
    years 1..9999 or infinite: `_pg_out_of_range`).
    """
    table, schema, batch_size = request.table, request.schema, request.batch_size
    is_sqlite = conn.dialect.name == "sqlite"
    is_pg = conn.dialect.name == "postgresql"
    columns = []
    for field in schema:
        col = table.c[field.name]
        # SQLite stores timestamps as text in many formats: read text, parse ourselves.
        if is_sqlite and isinstance(col.type, sa.DateTime | sa.Date):
            columns.append(sa.type_coerce(col, sa.String).label(col.name))
        elif is_pg and pa.types.is_string(field.type) and not isinstance(col.type, sa.String):
            columns.append(sa.cast(col, sa.Text).label(col.name))
        elif is_pg and isinstance(col.type, sa.DateTime) and col.type.timezone:
            utc = sa.func.timezone("UTC", col)
            columns.append(sa.type_coerce(utc, sa.DateTime()).label(col.name))
        else:
            columns.append(col)
    stmt = sa.select(*columns)
    row_filter = bound_filter(request.where_sql, request.params) if request.where_sql else None
    if row_filter is not None:
        stmt = stmt.where(row_filter)
    pk = list(table.primary_key.columns)
    if pk:
        stmt = stmt.order_by(*pk)
    key_name = pk[0].name if pk and pk[0].name in schema.names else schema.names[0]
    key_index = schema.get_field_index(key_name)
    converters = [_converter(f.type) for f in schema]
    result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(stmt)
    try:
        for rows in result.partitions(batch_size):
            arrays = []
            for i, field in enumerate(schema):
                convert = converters[i]
                try:
                    values = [convert(r[i]) for r in rows]
                    arrays.append(pa.array(values, type=field.type))
                except (ValueError, TypeError, ArithmeticError, pa.ArrowException) as exc:
                    bad = next(r for r in rows if _fails(convert, r[i], field.type))
                    raise UnlandableValueError(
                        f"{table.name}.{field.name}: cannot convert value {bad[i]!r} "
                        f"of row {key_name}={bad[key_index]}: {exc}"
                    ) from exc
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
    except sa.exc.DataError as exc:  # the driver could not load a value (psycopg)
        if is_pg:
            _pg_out_of_range(conn, table, schema, row_filter, key_name, exc)
        raise
    finally:
        result.close()


_LANDABLE_DAYS = ("0001-01-01", "10000-01-01")  # the years 1..9999 both readers land


def _pg_out_of_range(
    conn: sa.Connection,
    table: sa.Table,
    schema: pa.Schema,
    row_filter: sa.TextClause | None,
    key_name: str,
    exc: Exception,
) -> None:
    """The driver failed to load a row (psycopg: "timestamp too large (after year 10K)",
    without naming the column or row): find the first date/timestamp outside the years
    1..9999 (or infinite) in the rows read (`row_filter`: the read's, values bound), and
    raise naming table, column and key."""
    key = table.c[key_name]
    for field in schema:
        col = table.c[field.name]
        if not (pa.types.is_timestamp(field.type) or pa.types.is_date32(field.type)):
            continue
        if not isinstance(col.type, sa.DateTime | sa.Date):
            continue
        is_ts = isinstance(col.type, sa.DateTime)
        expr = sa.func.timezone("UTC", col) if is_ts and col.type.timezone else col
        bound = sa.DateTime() if is_ts else sa.Date()
        lo, hi = (sa.cast(sa.literal(d), bound) for d in _LANDABLE_DAYS)
        stmt = sa.select(key, sa.cast(col, sa.Text)).where(sa.not_(sa.and_(expr >= lo, expr < hi)))
        if row_filter is not None:
            stmt = stmt.where(row_filter)
        row = conn.execute(stmt.order_by(key).limit(1)).first()
        if row is not None:
            raise UnlandableValueError(
                f"{table.name}.{field.name}: cannot land value {row[1]!r} of row "
                f"{key_name}={row[0]}: outside the years 1..9999 that both readers land "
                f"(a typo'd year?): {exc.orig if hasattr(exc, 'orig') else exc}"
            ) from exc


def auto_read_batches(conn: sa.Connection, request: ReadRequest, /) -> Iterator[pa.RecordBatch]:
    """PostgreSQL: the binary COPY fast path (extract/pg_copy.py), inside the run's
    snapshot transaction; every other database: the generic reader. Same types, same rows."""
    if conn.dialect.name != "postgresql" or not _copy_reads(conn, request.table, request.schema):
        yield from read_batches(conn, request)
        return
    from extract.pg_copy import copy_batches

    where, binds = driver_filter(request.where_sql, request.params)
    query = _copy_query(request.table, request.schema, where, binds)
    yield from copy_batches(query, conn=conn, batch_rows=request.batch_size)


def _copy_query(table: sa.Table, schema: pa.Schema, where: str, binds: dict[str, Any]) -> CopyQuery:
    """The binary COPY of `schema`'s columns of `table`, the rows matching `where` (the
    driver's `%(name)s` form, `driver_filter`)."""
    from extract.pg_copy import CopyQuery

    return CopyQuery(
        table=table.name,
        columns=list(schema.names),
        schema=schema,
        where_sql=where,
        params=binds,
        pg_schema=table.schema,
        key=_row_key(table, schema),
    )


def _row_key(table: sa.Table, schema: pa.Schema) -> str:
    """The column that names a row in errors: the first primary key column (as the
    generic reader), else the first column."""
    pk = list(table.primary_key.columns)
    return pk[0].name if pk and pk[0].name in schema.names else schema.names[0]


def _copy_reads(conn: sa.Connection, table: sa.Table, schema: pa.Schema) -> bool:
    """Whether the COPY decoder reads every column's type (`pg_copy.SUPPORTED_TYPES`);
    if not, the table falls back to the generic reader, logged with the reason."""
    from extract.pg_copy import unsupported_columns

    unknown = unsupported_columns(conn, table.name, list(schema.names), table.schema)
    if unknown:
        log.warning(
            "%s: read with the generic reader, not binary COPY: the COPY decoder does not "
            "read the type of %s",
            table.name,
            ", ".join(f"{name} ({type_})" for name, type_ in unknown),
        )
    return not unknown


def ranged_reader(
    url: str, snapshot: str, key: str, degree: int, min_rows_per_range: int
) -> Reader:
    """A PostgreSQL reader that reads up to `degree` key ranges at once, in `snapshot`.

    Called on the run's snapshot transaction (`conn`), it sizes the read by the
    planner's estimate (a read under `min_rows_per_range` rows per range, e.g. an
    incremental slice, is not split: one stream costs less than the readers), cuts the
    key space into ranges in that same transaction (`split_key_ranges`), and streams
    every range through binary COPY on its own connection that imported `snapshot`
    (`extract_parallel`): all ranges see exactly the rows the run's transaction sees,
    each row in exactly one range. Batches come in no particular order; memory stays
    bounded by `degree` readers and a queue of `degree` batches.
    """
    from extract.key_ranges import (
        ParallelRead,
        RowFilter,
        estimate_rows,
        extract_parallel,
        split_key_ranges,
    )
    from extract.pg_copy import copy_batches, psycopg_connection

    def read(conn: sa.Connection, request: ReadRequest, /) -> Iterator[pa.RecordBatch]:
        table, schema = request.table, request.schema
        where, binds = driver_filter(request.where_sql, request.params)
        n = degree
        if not _copy_reads(conn, table, schema):  # logged: the generic reader, one stream
            yield from read_batches(conn, request)
            return
        if min_rows_per_range > 0:
            rows = estimate_rows(psycopg_connection(conn), table.name, where, binds)
            n = max(1, min(degree, rows // min_rows_per_range))
        ranges = (
            split_key_ranges(conn, table.name, key, n, RowFilter(where, binds)) if n > 1 else []
        )
        if len(ranges) < 2:
            yield from auto_read_batches(conn, request)
            return
        clause = f"{conn.dialect.identifier_preparer.quote(key)} between :range_lo and :range_hi"
        if request.where_sql:
            clause += f" and ({request.where_sql})"

        def read_range(worker: Any, lo: int, hi: int) -> Iterator[pa.RecordBatch]:
            range_where, range_binds = driver_filter(
                clause, {**request.params, "range_lo": lo, "range_hi": hi}
            )
            query = _copy_query(table, schema, range_where, range_binds)
            return copy_batches(query, conn=worker, batch_rows=request.batch_size)

        log.info("%s: reading %d key ranges of %s at once", table.name, len(ranges), key)
        yield from extract_parallel(
            ParallelRead(url, table.name, ranges, max_workers=len(ranges), snapshot=snapshot),
            read_range,
        )

    return read


def _fails(convert, value, arrow: pa.DataType | None = None) -> bool:
    try:
        converted = convert(value)
        if arrow is not None:
            pa.array([converted], type=arrow)
        return False
    except Exception:
        return True


def _sqlite_transactions(engine: sa.Engine) -> None:
    """Make `begin()` a real SQLite transaction, so that the run reads one snapshot.

    pysqlite opens a transaction only before a write: its SELECTs run in autocommit, each
    seeing the newest commit (measured: a commit by another connection between two reads
    of one `begin()` block was visible to the second). SQLAlchemy's documented recipe:
    pysqlite in autocommit mode and an explicit BEGIN. From the first read to the end of
    the run every table is read as of one moment. Cost: in the default rollback-journal
    mode writers wait while the extract reads (in WAL mode they do not).
    """

    @sa.event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def source_now(conn: sa.Connection) -> datetime:
    """The source database's own clock (UTC, aware): the run's upper bound U."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        value = conn.execute(sa.text("select strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar()
    elif dialect in ("mysql", "mariadb"):
        value = conn.execute(sa.text("select utc_timestamp(6)")).scalar()
    else:
        value = conn.execute(sa.select(sa.func.current_timestamp())).scalar()
    now = _to_utc(value)
    if now is None:
        raise RuntimeError(f"{dialect}: the source returned no current_timestamp")
    return now


def _bind_ts(conn: sa.Connection, column: sa.Column, ts: datetime) -> Any:
    """A UTC bound for comparing with `column`, in the form its database compares right."""
    if conn.dialect.name == "sqlite":
        return ts  # not used: SQLite bounds are day prefixes, see _window_where
    if getattr(column.type, "timezone", False):
        return ts.astimezone(UTC)
    return ts.astimezone(UTC).replace(tzinfo=None)  # naive columns hold UTC (contract)


def _window_where(
    conn: sa.Connection,
    column: sa.Column,
    lo: datetime | None,
    hi: datetime,
) -> tuple[str, dict[str, Any]]:
    """`(cursor IS NULL OR (cursor > :lo AND cursor <= :hi))` with bound parameters.

    NULL cursors are read by every run (they cannot be tracked, and must not be lost).
    On SQLite, timestamps are text in whatever ISO form the application wrote: the SQL
    filter is a conservative superset on the day prefix, and `_exact_window` filters
    the converted values exactly.
    """
    c = conn.dialect.identifier_preparer.quote(column.name)
    params: dict[str, Any] = {}
    if conn.dialect.name == "sqlite":
        params["hi"] = (hi + timedelta(days=2)).date().isoformat()
        bounds = [f"{c} < :hi"]
        if lo is not None:
            params["lo"] = (lo - timedelta(days=1)).date().isoformat()
            bounds.append(f"{c} >= :lo")
    else:
        params["hi"] = _bind_ts(conn, column, hi)
        bounds = [f"{c} <= :hi"]
        if lo is not None:
            params["lo"] = _bind_ts(conn, column, lo)
            bounds.append(f"{c} > :lo")
    return f"({c} is null or ({' and '.join(bounds)}))", params


def _exact_window(
    batches: Iterator[pa.RecordBatch], cursor: str, lo: datetime | None, hi: datetime
) -> Iterator[pa.RecordBatch]:
    """Keep exactly `lo < cursor <= hi` (or NULL), compared as UTC instants."""
    for batch in batches:
        col = batch.column(batch.schema.get_field_index(cursor))
        hi_s = pa.scalar(hi, type=col.type)
        keep = pc.less_equal(col, hi_s)
        if lo is not None:
            keep = pc.and_(keep, pc.greater(col, pa.scalar(lo, type=col.type)))
        keep = pc.or_(pc.is_null(col), pc.fill_null(keep, False))
        if pc.all(keep).as_py() is not False:
            yield batch
        else:
            yield batch.filter(keep)


def _key_batches(
    conn: sa.Connection,
    table: sa.Table,
    key: str,
    schema: pa.Schema,
    batch_size: int,
    where: Any = None,
) -> Iterator[pa.RecordBatch]:
    """Every key of `table`, streamed; `where` restricts it (a shard).

    The key set grows with the table's history, not with the night's change.
    On PostgreSQL it is read by the binary COPY decoder in the run's snapshot, unordered
    (the load takes the distinct keys), as the table's rows are: 2.6M keys in 5-7 s
    instead of 22-25 s as SQLAlchemy rows (a busy 2-CPU machine). A shard's filter keeps
    the generic read."""
    if where is None and conn.dialect.name == "postgresql":
        yield from auto_read_batches(conn, ReadRequest(table, schema, None, {}, batch_size))
        return
    stmt = sa.select(table.c[key]).order_by(table.c[key])
    if where is not None:
        stmt = stmt.where(where)
    result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(stmt)
    for rows in result.partitions(batch_size):
        yield pa.RecordBatch.from_arrays(
            [pa.array([r[0] for r in rows], type=schema.field(0).type)], schema=schema
        )


def _span_key_batches(
    conn: sa.Connection,
    table: sa.Table,
    key: str,
    schema: pa.Schema,
    batch_size: int,
    spans: Sequence[tuple[int, int]],
) -> Iterator[pa.RecordBatch]:
    """The keys of `table` within the `[lo, hi]` spans (by the key's index), streamed;
    `SPANS_PER_QUERY` spans a query, every bound a bound parameter (PostgreSQL: read by
    the binary COPY decoder in the run's snapshot, as the whole key set is)."""
    column = table.c[key]
    quoted = conn.dialect.identifier_preparer.quote(key)
    for start in range(0, len(spans), SPANS_PER_QUERY):
        chunk = spans[start : start + SPANS_PER_QUERY]
        if conn.dialect.name == "postgresql":
            where = " or ".join(f"{quoted} between :lo{i} and :hi{i}" for i in range(len(chunk)))
            binds: dict[str, Any] = {}
            for i, (lo, hi) in enumerate(chunk):
                binds.update({f"lo{i}": lo, f"hi{i}": hi})
            yield from auto_read_batches(conn, ReadRequest(table, schema, where, binds, batch_size))
            continue
        stmt = sa.select(column).where(sa.or_(*(column.between(lo, hi) for lo, hi in chunk)))
        result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(stmt)
        try:
            for rows in result.partitions(batch_size):
                yield pa.RecordBatch.from_arrays(
                    [pa.array([r[0] for r in rows], type=schema.field(0).type)], schema=schema
                )
        finally:
            result.close()


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _future_rows(
    conn: sa.Connection,
    table: sa.Table,
    config: TableConfig,
    upper: datetime,
    limit: datetime,
    scope: tuple[str, dict[str, Any]] | None,
) -> tuple[int, int, datetime | None, list[tuple[Any, datetime]]]:
    """Rows of `table` whose cursor is after `upper`: (how many, how many after `limit`,
    the newest cursor, up to FUTURE_SAMPLES (key, cursor) after `limit`, newest first).
    `scope`: a SQL predicate with binds restricting the rows (a shard's vshards)."""
    cursor, key = table.c[config.cursor], table.c[config.key]
    where = [] if scope is None else [bound_filter(*scope)]
    if conn.dialect.name == "sqlite":
        # timestamps are text in any ISO form: a superset on the day prefix, then exact
        day = (upper - timedelta(days=1)).date().isoformat()
        stmt = sa.select(key, sa.type_coerce(cursor, sa.String)).where(
            sa.type_coerce(cursor, sa.String) >= day, *where
        )
        after = []
        for k, raw in conn.execute(stmt):
            value = _to_utc(raw)
            if value is not None and value > upper:
                after.append((k, value))
        beyond = sorted((r for r in after if r[1] > limit), key=lambda r: r[1], reverse=True)
        newest = max((v for _, v in after), default=None)
        return len(after), len(beyond), newest, beyond[:FUTURE_SAMPLES]
    hi, lim = _bind_ts(conn, cursor, upper), _bind_ts(conn, cursor, limit)
    count, beyond, newest = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.count(sa.case((cursor > lim, 1))),
            sa.func.max(cursor),
        ).where(cursor > hi, *where)
    ).one()
    samples: list[tuple[Any, datetime]] = []
    if beyond:
        stmt = (
            sa.select(key, cursor)
            .where(cursor > lim, *where)
            .order_by(cursor.desc(), key)
            .limit(FUTURE_SAMPLES)
        )
        samples = [(k, _to_utc(v)) for k, v in conn.execute(stmt)]
    return int(count), int(beyond), _to_utc(newest), samples


def check_future_cursors(
    conn: sa.Connection,
    tables: Mapping[str, tuple[sa.Table, TableConfig]],
    upper: datetime,
    tolerance: timedelta,
    shard: ShardScope | None = None,
) -> dict[str, int]:
    """Stop the extract when a table has rows whose cursor is later than U + `tolerance`;
    else return how many rows of each checked table are after U.

    A run reads `cursor <= U`, U being the source's own clock. A row stamped after it
    (the writing application's clock far ahead of the database's) would not be read
    until the database's clock caught up, possibly years: silently missing. Landing it
    is no better: the warehouse's merge keeps the newest cursor per key, so its future
    stamp would outrank every real update of the row until then. So the run fails, in
    the run's snapshot and before anything is landed, naming the table, the count, sample
    keys and the newest value; the watermark does not move. Rows at most `tolerance`
    after U (ordinary clock skew) are only logged: the next run reads them.
    Every table whose cursor column is a timestamp is checked (full-mode tables too: what
    they land would outrank the updates of later incremental runs).
    """
    limit = upper + tolerance
    problems = []
    after_upper: dict[str, int] = {}
    for name, (table, config) in tables.items():
        column = table.c.get(config.cursor)
        if column is None or not isinstance(column.type, sa.DateTime):
            continue
        label(conn, name)
        scope = _owned_rows(conn, name, config, shard)
        count, beyond, newest, samples = _future_rows(conn, table, config, upper, limit, scope)
        after_upper[name] = count
        if count and not beyond:
            log.warning(
                "%s: %d row(s) with %s after the source's clock %s, within "
                "FUTURE_TOLERANCE_MINUTES (newest %s): a later run reads them",
                name,
                count,
                config.cursor,
                upper.isoformat(),
                _iso(newest),
            )
        if beyond:
            keys = ", ".join(f"{k!r} ({v.isoformat()})" for k, v in samples)
            problems.append(
                f"{name}: {beyond} row(s) with {config.cursor} later than the source's clock "
                f"{upper.isoformat()} + {tolerance} (FUTURE_TOLERANCE_MINUTES), the newest "
                f"{_iso(newest)}; sample {config.key}s, newest first: {keys}"
            )
    if problems:
        where = "" if shard is None else f" (shard {shard.name})"
        raise FutureCursorError(
            f"source rows from the future{where}: " + "; ".join(problems) + ". Nothing was "
            "landed and the watermarks did not move. Such rows would not be read until the "
            "database's clock caught up, and once loaded would outrank every real update "
            "of the row. Fix their cursor at the source (the writing application's clock), "
            "or the database's clock if it is the one behind; then rerun."
        )
    return after_upper


def _owned_rows(
    conn: sa.Connection, name: str, config: TableConfig, shard: ShardScope | None
) -> tuple[str, dict[str, Any]] | None:
    """The predicate with binds that keeps the rows of table `name` the shard owns (its
    vshards); None for an unsharded source."""
    if shard is None:
        return None
    return shard_predicate(
        config.key,
        shard.owned(name),
        conn.dialect.name,
        virtual_shards=shard.virtual_shards,
        param_prefix="fvs",
    )


def source_rows_through_upper(
    conn: sa.Connection,
    tables: Mapping[str, tuple[sa.Table, TableConfig]],
    after_upper: Mapping[str, int],
    shard: ShardScope | None = None,
) -> dict[str, int]:
    """The rows each incremental table holds up to U in the run's snapshot (all rows
    minus those after U), for the tables whose rows after U were counted
    (`check_future_cursors`). Its manifest records it as `source_rows`; the load fails
    when raw then holds fewer: rows the windows never read (committed later than the
    overlap behind the watermark).

    Never a false alarm, hard deletes included: raw holds every key of the snapshot but
    the rows inserted after U (deleted keys leave raw and the count alike), and rows after
    U are at least those. Rows updated after U can hide as many missed rows; in a night
    they are the few committed while the extract runs. A shard counts the rows it owns;
    the load compares raw with the sum over the shards."""
    rows: dict[str, int] = {}
    for name, (table, config) in tables.items():
        if config.mode != "incremental" or name not in after_upper:
            continue
        label(conn, name)
        stmt = sa.select(sa.func.count()).select_from(table)
        if (scope := _owned_rows(conn, name, config, shard)) is not None:
            stmt = stmt.where(bound_filter(*scope))
        total = conn.execute(stmt).scalar_one()
        rows[name] = int(total) - after_upper[name]
    return rows


def window_start(
    config: TableConfig,
    warehouse_path: Path | None,
    shard: str = "",
) -> datetime | None:
    """Lower bound of the next incremental window of `config`: W - overlap, None at first.

    W is the window end of the last *loaded* run, but never later than the newest cursor
    value loaded so far: an application whose clock lags the database's (or a replayed
    history) would otherwise write rows below the window. Both bounds are safe under the
    contract's out-of-order bound; taking the lower one only re-reads a few rows.
    """
    if config.mode == "full" or warehouse_path is None:
        return None
    mark = last_watermark(warehouse_path, SOURCE_NAME, config.name, shard)
    if mark is None or mark.window_end is None:
        return None
    start = mark.window_end
    max_cursor = getattr(mark, "max_cursor", None)
    if max_cursor is not None and max_cursor < start:
        start = max_cursor
    return start.astimezone(UTC) - config.overlap


def _reflect(conn: sa.Connection, metadata: sa.MetaData, config: TableConfig) -> sa.Table:
    """The table's columns and primary key, as the source has them now.

    Only what the extract uses: full `Table` reflection also reads indexes, foreign
    keys, constraints and comments (8 catalog queries on PostgreSQL, ~0.1-0.7 s a table:
    a large share of a small incremental run).
    """
    inspector = sa.inspect(conn)
    try:
        columns = inspector.get_columns(config.name)
    except sa.exc.NoSuchTableError as exc:
        raise SchemaError(f"source table {config.name!r} does not exist") from exc
    if not columns:  # some dialects answer an unknown table with no columns
        raise SchemaError(f"source table {config.name!r} does not exist")
    pk = set(inspector.get_pk_constraint(config.name).get("constrained_columns") or ())
    table = sa.Table(
        config.name,
        metadata,
        *(sa.Column(c["name"], c["type"], primary_key=c["name"] in pk) for c in columns),
    )
    needed = list(config.required_columns) + [config.key]
    if config.mode == "incremental":
        needed.append(config.cursor)
    missing = [c for c in dict.fromkeys(needed) if c not in table.c]
    if missing:
        raise SchemaError(
            f"source table {config.name!r} lacks required column(s) "
            f"{', '.join(missing)}; it has {', '.join(table.c.keys())}"
        )
    if config.mode == "incremental" and not isinstance(table.c[config.cursor].type, sa.DateTime):
        raise SchemaError(
            f"source table {config.name!r}: cursor column {config.cursor!r} is "
            f"{table.c[config.cursor].type}, not a timestamp; use mode: full for this table"
        )
    return table


@dataclass(frozen=True)
class ShardScope:
    """What one physical shard of a sharded source contributes to a run.

    Per table: the vshards read with the shard's own watermark window
    (`incremental_vshards`, lower bound `lower`) and those read with no lower bound
    (`full_vshards`: new to this shard since its last loaded map). `manifest` is added to
    every manifest the shard lands (shard name, the run's public map, the extract id).
    """

    name: str
    virtual_shards: int
    incremental_vshards: Mapping[str, Ranges]
    full_vshards: Mapping[str, Ranges]
    lower: Mapping[str, datetime | None]
    manifest: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def owned(self, table: str) -> Ranges:
        return normalize_ranges(
            (*self.incremental_vshards.get(table, ()), *self.full_vshards.get(table, ()))
        )


def _scoped_batches(
    run: _RunState, table: sa.Table, schema: pa.Schema, config: TableConfig
) -> Iterator[pa.RecordBatch]:
    """One shard's rows of `table`: its incremental vshards in (lo, U], its newly
    assigned vshards in (-inf, U] (full-mode tables: every owned vshard, no window).
    Every read is restricted to vshards the run's map gives this shard, in the run's
    snapshot."""
    scope = run.plan.shard
    assert scope is not None
    lo = run.lower[config.name]
    if config.mode != "incremental" or lo is None:
        reads = [(scope.owned(config.name), None)]
    else:
        reads = [
            (scope.incremental_vshards.get(config.name, ()), lo),
            (scope.full_vshards.get(config.name, ()), None),
        ]
    parts = []
    for ranges, bound in reads:
        if ranges:
            predicate = shard_predicate(
                config.key, ranges, run.conn.dialect.name, virtual_shards=scope.virtual_shards
            )
            parts.append(_filtered_batches(run, table, schema, config, predicate, bound))
    return itertools.chain.from_iterable(parts)


def _filtered_batches(
    run: _RunState,
    table: sa.Table,
    schema: pa.Schema,
    config: TableConfig,
    predicate: tuple[str, dict[str, Any]] | None,
    lo: datetime | None,
) -> Iterator[pa.RecordBatch]:
    """The rows of `table` matching `predicate` (a shard's vshards, or None): for an
    incremental table those in the window (lo, U] (and NULL cursors), cut exactly."""
    read = run.readers[config.name]
    batch_size = run.plan.batch_size
    if config.mode != "incremental":
        where, params = predicate if predicate is not None else (None, {})
        return read(run.conn, ReadRequest(table, schema, where, params, batch_size))
    where, params = _window_where(run.conn, table.c[config.cursor], lo, run.upper)
    if predicate is not None:
        where, params = f"{predicate[0]} and {where}", {**params, **predicate[1]}
    window = CursorWindow(config.cursor, lo, run.upper)
    batches = read(run.conn, ReadRequest(table, schema, where, params, batch_size, window))
    return _exact_window(batches, config.cursor, lo, run.upper)


def _export_snapshot(
    conn: sa.Connection, configs: Sequence[TableConfig], parallelism: int, reader: Reader
) -> str | None:
    """The run transaction's snapshot id for parallel readers, when any table needs one."""
    if conn.dialect.name != "postgresql" or reader is not auto_read_batches:
        return None
    if all(c.degree(parallelism) <= 1 for c in configs):
        return None
    return conn.execute(sa.text("select pg_export_snapshot()")).scalar_one()


def _read_choice_fields(choice: ReadChoice | None) -> dict[str, Any]:
    """Manifest fields saying where a run read from (only when a replica was configured)."""
    if choice is None or choice.reason == NO_REPLICA:
        return {}
    lag = choice.lag_seconds
    return {
        "read_from": "replica" if choice.used_replica else "primary",
        "replica_lag_seconds": lag if lag is not None and math.isfinite(lag) else None,
        "read_reason": choice.reason,
    }


@dataclass(frozen=True)
class ExtractPlan:
    """What one extract run reads from its source and where it lands it.

    Tables and modes: `configs` (incremental tables land `(W - overlap, U]` after the
    watermark read from `warehouse_path`, None: no watermark; full tables land
    everything; `reconcile_deletes` tables also land `<table>__keys`). Landing target:
    `landing_root` / `run_id`, with `manifest_extras` in every manifest and the
    operator's schema-drift acceptance `accept_drift` (`<table>.<column>` specs, see
    extract/landing.py `check_schema_drift`). Limits: rows per batch, key ranges read at
    once per table (`parallelism`, unless the table's own `parallel_ranges`; reads
    estimated under `parallel_min_rows` rows a range are not split), and
    `future_tolerance` (None: `FUTURE_TOLERANCE_MINUTES`) past the source's clock.

    `read_choice`: how the URL was chosen (`extract.replica.choose_read_url`); from a
    replica lagging L seconds the recorded window end is U - L. `shard`: one physical
    shard's part of a sharded run (set by `extract_sharded_source`). `reader`: how rows
    are read; `aggregates`: a `ReadHook` wrapping it; `source_check`: the source's
    identity check (extract/source_identity.py), which can turn the run to full reads.
    """

    run_id: str
    landing_root: Path
    warehouse_path: Path | None
    configs: Sequence[TableConfig] = DEFAULT_TABLES
    batch_size: int = 50_000
    parallelism: int = 1
    parallel_min_rows: int = PARALLEL_MIN_ROWS
    future_tolerance: timedelta | None = None
    accept_drift: bool | Sequence[str] = False
    manifest_extras: Mapping[str, Any] | None = None
    read_choice: ReadChoice | None = None
    shard: ShardScope | None = None
    reader: Reader = auto_read_batches
    aggregates: ReadHook | None = None
    source_check: SourceCheckHook | None = None

    def lower_bounds(self) -> dict[str, datetime | None]:
        """Each table's window start: from the watermarks, or the shard's own."""
        if self.shard is not None:
            return {c.name: self.shard.lower.get(c.name) for c in self.configs}
        return {c.name: window_start(c, self.warehouse_path) for c in self.configs}


@dataclass
class _RunState:
    """One run inside its snapshot transaction: the plan as it stands after the source
    check, the bounds U and the recorded window end, and each table's reader."""

    conn: sa.Connection
    url: str
    plan: ExtractPlan
    upper: datetime
    window_end: datetime
    lower: dict[str, datetime | None]
    snapshot: str | None = None
    readers: dict[str, Reader] = dataclasses.field(default_factory=dict)
    reading: str = SOURCE_NAME  # the table being read, for a timeout's message
    # rows up to U per table (`source_rows_through_upper`), recorded in its manifest
    source_rows: dict[str, int] = dataclasses.field(default_factory=dict)


def extract_tables(url: str, plan: ExtractPlan) -> dict[str, dict[str, Any]]:
    """Extract `plan.configs` from `url` in one snapshot; return the manifest per landed
    table.

    The source's clock U is read first; then the source check (`plan.source_check`, in
    the run's connection: its fields go into every manifest, and a reason it gives turns
    every table to a full read, recorded as `source_changed`), the reflection, and the
    check for rows after U + the future tolerance (`check_future_cursors`: nothing is
    landed). Tables whose degree (`config.parallel_ranges`, else `plan.parallelism`) is
    above 1 are read by key ranges at once on PostgreSQL (`ranged_reader`), every reader
    in the run's own exported snapshot; other databases read one stream per table.
    """
    lower = plan.lower_bounds()  # the watermarks, read before the source's clock
    tolerance = _future_tolerance(plan)
    engine = _source_engine(url)
    state: _RunState | None = None
    try:
        isolation = (
            {"isolation_level": "REPEATABLE READ"}
            if engine.dialect.name in ("postgresql", "mysql", "mariadb")
            else {}
        )
        with engine.connect().execution_options(**isolation) as conn, conn.begin():
            state = _open_run(conn, url, plan, lower)
            tables = _reflect_tables(state)
            after = check_future_cursors(conn, tables, state.upper, tolerance, state.plan.shard)
            state.source_rows = source_rows_through_upper(conn, tables, after, state.plan.shard)
            manifests: dict[str, dict[str, Any]] = {}
            for table, config in tables.values():
                manifests.update(_land_table(state, table, config))
    except Exception as exc:
        # A read that timed out closed its connection: the rollback then fails too, and
        # that error would hide the one that names the table and the setting.
        raise_source_timeout(exc)
        raise_statement_timeout(exc, state.reading if state is not None else SOURCE_NAME)
        raise
    finally:
        engine.dispose()
    return manifests


def _source_engine(url: str) -> sa.Engine:
    """An engine on the source whose `begin()` is a real snapshot transaction, and whose
    waits for the server past SOURCE_READ_STALL_TIMEOUT_S fail."""
    engine = sa.create_engine(sqlalchemy_url(url), connect_args=connect_args(sqlalchemy_url(url)))
    if engine.dialect.name == "sqlite":
        _sqlite_transactions(engine)
    install(engine)
    return engine


def _future_tolerance(plan: ExtractPlan) -> timedelta:
    if plan.future_tolerance is not None:
        return plan.future_tolerance
    return timedelta(minutes=future_tolerance_minutes())


def _open_run(
    conn: sa.Connection, url: str, plan: ExtractPlan, lower: dict[str, datetime | None]
) -> _RunState:
    """Fix the run's bounds in its transaction: U (the first statement, so it is not
    after the snapshot), the source check's verdict, the window end (lag-corrected on a
    replica, `replica_safe_window_end`) and the snapshot parallel readers import."""
    upper = source_now(conn)
    if plan.source_check is not None:
        found, why = plan.source_check(conn, plan.configs)
        extras = {**(plan.manifest_extras or {}), **found}
        if why is not None:
            log.warning("%s: full re-extract and rebuild", why)
            extras.update(source_changed=True, source_change_reason=why)
            configs = [dataclasses.replace(c, mode="full") for c in plan.configs]
            plan = dataclasses.replace(plan, configs=configs)
            lower = {c.name: None for c in configs}
        plan = dataclasses.replace(plan, manifest_extras=extras)
    choice = plan.read_choice
    return _RunState(
        conn=conn,
        url=url,
        plan=plan,
        upper=upper,
        window_end=upper if choice is None else replica_safe_window_end(upper, choice),
        lower=lower,
        snapshot=_export_snapshot(conn, plan.configs, plan.parallelism, plan.reader),
    )


def _reflect_tables(run: _RunState) -> dict[str, tuple[sa.Table, TableConfig]]:
    """Every table of the plan as the source has it now, with its reader for the run."""
    metadata = sa.MetaData()
    tables = {}
    for config in run.plan.configs:
        label(run.conn, config.name)
        run.reading = config.name
        table = _reflect(run.conn, metadata, config)
        tables[config.name] = (table, config)
        reader = _table_reader(run, table, config)
        hook = run.plan.aggregates
        run.readers[config.name] = hook(reader) if hook is not None else reader
    return tables


def _table_reader(run: _RunState, table: sa.Table, config: TableConfig) -> Reader:
    """The reader of one table: key ranges at once when it is configured and possible."""
    reader = run.plan.reader
    degree = config.degree(run.plan.parallelism)
    if degree <= 1:
        return reader
    if run.snapshot is None or reader is not auto_read_batches:
        log.info(
            "%s: parallel_ranges=%d read as one stream (%s: no shared snapshot across "
            "connections, or a custom reader)",
            config.name,
            degree,
            run.conn.dialect.name,
        )
        return reader
    if not isinstance(table.c[config.key].type, sa.Integer):
        log.warning(
            "%s: parallel_ranges=%d needs an integer key, %s is %s: one stream",
            config.name,
            degree,
            config.key,
            table.c[config.key].type,
        )
        return reader
    return ranged_reader(run.url, run.snapshot, config.key, degree, run.plan.parallel_min_rows)


def _land_table(run: _RunState, table: sa.Table, config: TableConfig) -> dict[str, dict[str, Any]]:
    """Land one table's rows (and its key set for `reconcile_deletes`): {name: manifest}."""
    label(run.conn, config.name)
    run.reading = config.name
    schema = pa.schema([pa.field(c.name, arrow_type(c.type)) for c in table.columns])
    if run.plan.shard is not None:
        batches = _scoped_batches(run, table, schema, config)
    else:
        batches = _filtered_batches(run, table, schema, config, None, run.lower[config.name])
    cursor = config.cursor if config.cursor in schema.names else None
    options = LandingOptions(
        cursor_column=cursor,
        extra_manifest=_table_manifest_fields(run, config),
        accept_drift=run.plan.accept_drift,
    )
    manifest = write_landing_table(
        batches, schema=schema, target=_target(run, config.name), options=options
    )
    log.info(
        "extracted %s.%s (%s, window %s .. %s): %d rows, %d bytes",
        SOURCE_NAME,
        config.name,
        config.mode,
        _iso(run.lower[config.name]),
        _iso(run.upper),
        manifest["rows"],
        manifest["bytes"],
    )
    landed = {config.name: manifest}
    if config.reconcile_deletes:
        landed.update(_land_keys(run, table, config))
    return landed


def _target(run: _RunState, table_name: str) -> LandingTarget:
    return LandingTarget(run.plan.landing_root, SOURCE_NAME, table_name, run.plan.run_id)


def _table_manifest_fields(run: _RunState, config: TableConfig) -> dict[str, Any]:
    """What a table's manifest records about the read: mode, key, window, read source,
    the plan's extras and, for a shard, its vshards."""
    fields: dict[str, Any] = {
        "mode": config.mode,
        "key": config.key,
        "cursor_key": config.cursor,
        "window_start": _iso(run.lower[config.name]),
        "window_end": _iso(run.window_end),
        "overlap_seconds": config.overlap.total_seconds(),
        "reconcile_deletes": config.reconcile_deletes,
    }
    if config.name in run.source_rows:
        fields["source_rows"] = run.source_rows[config.name]
    fields.update(_read_choice_fields(run.plan.read_choice))
    fields.update(run.plan.manifest_extras or {})
    shard = run.plan.shard
    if shard is not None:
        fields.update(shard.manifest)
        fields["vshards"] = [list(r) for r in shard.owned(config.name)]
        fields["full_vshards"] = [list(r) for r in shard.full_vshards.get(config.name, ())]
    return fields


def _land_key_set(
    run: _RunState,
    table: sa.Table,
    config: TableConfig,
    *,
    spans: Sequence[tuple[int, int]] | None = None,
    fields: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Land `<table>__keys`, every key of the table in the run's snapshot (a shard's:
    those of its vshards), from which the load finds the rows deleted at the source.
    `spans`: only the keys in these `[lo, hi]` intervals (the changed buckets)."""
    keys_name = f"{config.name}__keys"
    key_schema = pa.schema([pa.field(config.key, arrow_type(table.c[config.key].type))])
    fields = {
        "mode": "key_set",
        "key": config.key,
        "of_table": config.name,
        "window_end": _iso(run.window_end),
        **(run.plan.manifest_extras or {}),
        **(fields or {}),
    }
    key_where = None
    shard = run.plan.shard
    if shard is not None:
        owned = shard.owned(config.name)
        key_where = shard_filter(table.c[config.key], owned, shard.virtual_shards)
        fields.update(shard.manifest)
        fields["vshards"] = [list(r) for r in owned]
    if spans is None:
        batches = _key_batches(
            run.conn, table, config.key, key_schema, run.plan.batch_size, key_where
        )
    else:
        batches = _span_key_batches(
            run.conn, table, config.key, key_schema, run.plan.batch_size, spans
        )
    manifest = write_landing_table(
        batches,
        schema=key_schema,
        target=_target(run, keys_name),
        options=LandingOptions(extra_manifest=fields),
    )
    log.info("extracted %s.%s: %d keys", SOURCE_NAME, keys_name, manifest["rows"])
    return manifest


# The key spans of the changed buckets are read this many to a query (bound values).
SPANS_PER_QUERY = 200


def _summarised(run: _RunState, table: sa.Table, config: TableConfig) -> bool:
    """Whether the table's key set is checked by bucket summaries: one integer key on an
    engine with a known integer division, not a shard (a shard lands its full key set)."""
    return (
        run.plan.shard is None
        and key_summary.supported(run.conn.dialect.name)
        and isinstance(table.c[config.key].type, sa.Integer)
    )


def _source_summaries(conn: sa.Connection, table: sa.Table, key: str) -> dict[int, tuple]:
    """{bucket: (n, s1, s2)} of the table's keys in the run's snapshot: one GROUP BY.

    PostgreSQL cannot know that the buckets are few (it plans one group a key): its
    cost estimate then turns on JIT compilation, which took longer than the query
    (0.5-1.6 s of 2 s at 2.6M keys); it is off for this query only."""
    prep = conn.dialect.identifier_preparer
    query = key_summary.summary_sql(prep.quote(key), prep.format_table(table), conn.dialect.name)
    jit = None
    if conn.dialect.name == "postgresql":
        jit = conn.execute(sa.text("select current_setting('jit')")).scalar_one()
        conn.execute(sa.text("select set_config('jit', 'off', true)"))
    try:
        rows = conn.execute(sa.text(query), key_summary.params()).all()
    finally:
        if jit is not None:
            conn.execute(sa.text("select set_config('jit', :jit, true)"), {"jit": jit})
    return {int(b): (int(n), int(s1), int(s2)) for b, n, s1, s2 in rows}


@dataclass(frozen=True)
class _KeyCheck:
    """What a summarised table's key check lands: the source's bucket summaries in the
    run's snapshot (`current`), the newest earlier landed ones they were compared with
    (`previous`: (manifest, summaries), or None), the buckets whose summary differs
    (`changed`), and why every key lands instead of the changed buckets' (`why_all`)."""

    current: dict[int, key_summary.Summary]
    previous: tuple[dict[str, Any], dict[int, key_summary.Summary]] | None
    changed: list[int]
    why_all: str | None
    width: int = key_summary.WIDTH

    @property
    def every(self) -> bool:
        """Whether every key lands (not only the changed buckets' keys)."""
        return self.why_all is not None

    @property
    def with_keys(self) -> set[int]:
        """The buckets whose keys land."""
        return set(self.current) if self.every else set(self.changed)


def _plan_key_check(run: _RunState, table: sa.Table, config: TableConfig) -> _KeyCheck:
    """Summarise the source's keys and decide which buckets' keys land: every key for a
    table read in full, on the load's request, with no earlier summaries, or when most
    buckets changed; else the keys of the changed buckets only."""
    root, width = run.plan.landing_root, key_summary.WIDTH
    current = _source_summaries(run.conn, table, config.key)
    previous = None
    why_all = None
    if config.mode == "full":
        why_all = "the table is read in full"
    elif (request := key_check.full_key_set_requested(root, config.name)) is not None:
        why_all = f"the load asked for it ({request.get('reason')})"
    else:
        previous = key_check.previous_summaries(
            root, config.name, run.plan.run_id, config.key, width
        )
        if previous is None:
            why_all = "no earlier key-range summaries are landed"
    changed: list[int] = []
    if previous is not None:
        changed = key_summary.changed_buckets(current, previous[1])
        if len(changed) * 2 > max(len(current), 1):
            why_all = f"{len(changed)} of {len(current)} buckets changed"
    return _KeyCheck(current, previous, changed, why_all, width)


def _key_check_fields(check: _KeyCheck) -> dict[str, Any]:
    """The manifest fields both the keys and the summaries record (one check id)."""
    return {
        "keys": "all" if check.every else "changed",
        "key_check_id": uuid.uuid4().hex,
        "width": check.width,
        "buckets": len(check.current),
        "buckets_with_keys": len(check.current) if check.every else len(check.changed),
    }


def _summaries_table(check: _KeyCheck) -> pa.Table:
    """`<table>__key_ranges`: a row per bucket holding keys now or whose keys land (an
    emptied changed bucket is (0, 0, 0)), and whether its keys land."""
    with_keys = check.with_keys
    buckets = sorted(set(check.current) | with_keys)
    empty = (0, 0, 0)
    rows = [check.current.get(b, empty) for b in buckets]
    return pa.table(
        {
            "b": pa.array(buckets, pa.int64()),
            "n": pa.array([r[0] for r in rows], pa.int64()),
            "s1": pa.array([r[1] for r in rows], pa.int64()),
            "s2": pa.array([r[2] for r in rows], pa.int64()),
            "keys": pa.array([b in with_keys for b in buckets], pa.bool_()),
        },
        schema=key_check.RANGES_SCHEMA,
    )


def _land_summaries(
    run: _RunState, config: TableConfig, check: _KeyCheck, fields: dict[str, Any]
) -> dict[str, Any]:
    """Land `<table>__key_ranges` with what the check compared with in its manifest."""
    previous = check.previous[0] if check.previous is not None else None
    return write_landing_table(
        _summaries_table(check),
        schema=key_check.RANGES_SCHEMA,
        target=_target(run, f"{config.name}{key_check.RANGES_SUFFIX}"),
        options=LandingOptions(
            extra_manifest={
                "mode": "key_ranges",
                "key": config.key,
                "of_table": config.name,
                "window_end": _iso(run.window_end),
                **(run.plan.manifest_extras or {}),
                **fields,
                "hash_p": key_summary.HASH_P,
                "hash_q": key_summary.HASH_Q,
                "all_keys_because": check.why_all,
                "previous_run_id": None if previous is None else previous.get("run_id"),
                "previous_checksum": (
                    None if previous is None else previous.get("checksum_sha256")
                ),
            }
        ),
    )


def _land_keys(run: _RunState, table: sa.Table, config: TableConfig) -> dict[str, dict[str, Any]]:
    """Land the key check of a `reconcile_deletes` table: `{name: manifest}`.

    Summarised tables (`_summarised`) land `<table>__key_ranges`, the source's bucket
    summaries in the run's snapshot, and `<table>__keys` with the keys of the buckets
    whose summary differs from the newest earlier landed summaries only: every key when
    there are none (first night, or an earlier format), when the table is read in full,
    when most buckets changed, or when the loader asked for a full key set
    (extract/key_check.py, `_plan_key_check`). Other tables land every key, as
    `_land_key_set` does.
    """
    keys_name = f"{config.name}{key_check.KEYS_SUFFIX}"
    if not _summarised(run, table, config):
        return {keys_name: _land_key_set(run, table, config)}
    check = _plan_key_check(run, table, config)
    fields = _key_check_fields(check)
    if check.every:
        log.info("%s: every key lands: %s", config.name, check.why_all)
    spans = None if check.every else key_summary.intervals(check.changed, check.width)
    keys = _land_key_set(run, table, config, spans=spans, fields=fields)
    ranges_name = f"{config.name}{key_check.RANGES_SUFFIX}"
    ranges = _land_summaries(run, config, check, fields)
    if check.every:
        key_check.clear_full_key_set_request(run.plan.landing_root, config.name)
    log.info(
        "extracted %s.%s: %d buckets, keys of %d landed (%d keys)",
        SOURCE_NAME,
        ranges_name,
        len(check.current),
        fields["buckets_with_keys"],
        keys["rows"],
    )
    return {keys_name: keys, ranges_name: ranges}


# --------------------------------------------------------------------------- sharded


def _where_read(choice: ReadChoice) -> str:
    return "replica" if choice.used_replica else "primary"


def shard_run_id(run_id: str, shard: str) -> str:
    """Landing run id of one shard's part of a run: `<run_id>.shard-<name>`."""
    if not _SHARD_NAME.match(shard or ""):
        raise ShardMapError(
            f"shard name {shard!r} cannot name a landing directory: "
            "use letters, digits, '_' and '-' (starting with a letter or digit)"
        )
    return run_ids.shard_run_id(run_id, shard)


def shard_run_record_path(landing_root: Path, run_id: str) -> Path:
    """The record of a complete sharded run (written after every shard has landed)."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", run_id) or ".." in run_id:
        raise ValueError(f"invalid run id {run_id!r}")
    return Path(landing_root) / SOURCE_NAME / SHARD_RUNS_DIR / f"run={run_id}.json"


def read_shard_run_record(landing_root: Path, run_id: str) -> dict[str, Any] | None:
    """The run record of sharded run `run_id`, or None (not sharded, or not complete)."""
    path = shard_run_record_path(landing_root, run_id)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _previous_map(warehouse_path: Path | None, table: str, shard: str) -> ShardMap | None:
    recorded = last_loaded_shard_map(warehouse_path, SOURCE_NAME, table, shard)
    if recorded is None:
        return None
    try:
        return ShardMap.from_dict(recorded)
    except ShardMapError as exc:  # then the shard is read in full: safe, only slower
        log.warning("shard %s, %s: ignoring the recorded shard map: %s", shard, table, exc)
        return None


def shard_scopes(
    shard_map: ShardMap,
    *,
    warehouse_path: Path | None,
    configs: Sequence[TableConfig],
    extra_manifest: Mapping[str, Any] | None = None,
) -> dict[str, ShardScope]:
    """Per physical shard with vshards: what to read, from the warehouse's watermarks and
    the map recorded with each shard's last loaded extract (`plan_shard_reads`)."""
    scopes: dict[str, ShardScope] = {}
    plans = {
        c.name: plan_shard_reads(
            shard_map,
            {
                watermark_shard_key(s.name): _previous_map(
                    warehouse_path, c.name, watermark_shard_key(s.name)
                )
                for s in shard_map.shards
                if s.vshards
            },
        )
        for c in configs
    }
    for s in shard_map.shards:
        if not s.vshards:
            continue
        shard_run_id("x", s.name)  # the name must be usable in a landing path
        key = watermark_shard_key(s.name)
        scopes[s.name] = ShardScope(
            name=s.name,
            virtual_shards=shard_map.virtual_shards,
            incremental_vshards={
                c.name: plans[c.name][s.name].incremental_vshards for c in configs
            },
            full_vshards={c.name: plans[c.name][s.name].full_vshards for c in configs},
            lower={c.name: window_start(c, warehouse_path, shard=key) for c in configs},
            manifest={**(extra_manifest or {}), "shard": key},
        )
    return scopes


@dataclass(frozen=True)
class ShardReadPolicy:
    """How the shards of a sharded run are read: `max_workers` shards at once, and the
    replica policy of shards without their own (`replica_max_lag_seconds`,
    `replica_on_lag`; `lag_fn` measures a replica's lag right before its snapshot)."""

    max_workers: int = 8
    replica_max_lag_seconds: float = 300.0
    replica_on_lag: OnLag = "primary"
    lag_fn: LagFn = replication_lag_seconds

    def read_choice(self, shard: PhysicalShard, url: str) -> ReadChoice:
        """The shard's replica when it lags at most the allowed seconds, else its
        primary, or `ReplicaLagError` (the shard's own settings before the run's)."""
        lag = shard.replica_max_lag_seconds
        on_lag = shard.replica_on_lag
        return choose_read_url(
            url,
            shard.resolve_replica_url(),
            max_lag_seconds=self.replica_max_lag_seconds if lag is None else lag,
            on_lag=self.replica_on_lag if on_lag is None else on_lag,
            lag_fn=self.lag_fn,
        )


_SET_PER_SHARD = ("shard", "read_choice", "source_check")


def extract_sharded_source(
    shard_map: ShardMap, plan: ExtractPlan, policy: ShardReadPolicy = ShardReadPolicy()
) -> dict[str, Any]:
    """Extract every physical shard of `shard_map` in parallel into the landing zone.

    Each shard: `extract_tables` with `plan` in one snapshot transaction on its own
    database (its replica per `policy`, the window end then lag-corrected), restricted
    by its `ShardScope`, landed as run `<run_id>.shard-<name>`. `plan.aggregates` is
    used by every shard at once (it must be thread-safe); `plan.parallelism` key ranges
    per table within each shard: shards x ranges connections may be open at once. Once
    every shard has landed, the run record (`shard_run_record_path`) lists them with the
    run's map; before, an earlier record of the same run id is removed, so a run with a
    failed shard is never loadable. A failure raises `ShardExtractError` naming every
    failed shard.

    Returns {"map_version", "shards": {name: {table: rows}}, "rows": {table: rows}}.
    """
    given = [name for name in _SET_PER_SHARD if getattr(plan, name) is not None]
    if given:
        raise ValueError(
            f"extract_sharded_source sets {', '.join(given)} per shard: leave it unset in the plan"
        )
    record_path = shard_run_record_path(plan.landing_root, plan.run_id)
    record_path.unlink(missing_ok=True)
    extract_id = uuid.uuid4().hex
    scopes = shard_scopes(
        shard_map,
        warehouse_path=plan.warehouse_path,
        configs=plan.configs,
        extra_manifest={
            "shard_map": shard_map.to_public_dict(),
            "extract_id": extract_id,
            "logical_run_id": plan.run_id,
        },
    )
    _log_full_vshards(scopes)

    def read_shard(name: str, url: str, _sql: str, _params: dict[str, int]) -> dict[str, Any]:
        # the per-table predicates come from the shard's scope (same vshards as _sql)
        choice = policy.read_choice(shard_map.shard(name), url)
        if choice.reason != NO_REPLICA:
            log.info("shard %s reads from the %s: %s", name, _where_read(choice), choice.reason)
        shard_plan = dataclasses.replace(
            plan, run_id=shard_run_id(plan.run_id, name), shard=scopes[name], read_choice=choice
        )
        return extract_tables(choice.url, shard_plan)

    results = extract_sharded(shard_map, read_shard, max_workers=policy.max_workers)
    shards = [_shard_summary(plan.run_id, res) for res in results]
    write_json_atomic(
        record_path,
        {
            "source": SOURCE_NAME,
            "run_id": plan.run_id,
            "extract_id": extract_id,
            "shard_map": shard_map.to_public_dict(),
            "shards": shards,
            "written_at": clock.now().isoformat(),
        },
        default=str,
    )
    per_shard = {s["name"]: {t: v["rows"] for t, v in s["tables"].items()} for s in shards}
    totals: dict[str, int] = {}
    for tables in per_shard.values():
        for t, n in tables.items():
            totals[t] = totals.get(t, 0) + n
    log.info(
        "sharded extract run=%s (map v%d, %d shards): %s",
        plan.run_id,
        shard_map.version,
        len(shards),
        per_shard,
    )
    return {"map_version": shard_map.version, "shards": per_shard, "rows": totals}


def _log_full_vshards(scopes: Mapping[str, ShardScope]) -> None:
    for scope in scopes.values():
        full = {t: r for t, r in scope.full_vshards.items() if r}
        if full:
            log.info(
                "shard %s: vshards read in full (new to this shard since its last load): %s",
                scope.name,
                {t: [list(x) for x in r] for t, r in full.items()},
            )


def _shard_summary(run_id: str, result: ShardResult) -> dict[str, Any]:
    """One shard's entry in the run record: its landing run, vshards, time and tables."""
    return {
        "name": result.shard,
        "landing_run_id": shard_run_id(run_id, result.shard),
        "vshards": [list(r) for r in result.vshards],
        "seconds": round(result.seconds, 3),
        "tables": {
            t: {"rows": m["rows"], "checksum_sha256": m["checksum_sha256"]}
            for t, m in result.value.items()
        },
    }
