"""Extract the operational tables from any SQLAlchemy URL into the landing zone.

Incremental, as docs/extract-design.md says: every run reads all its tables in ONE
snapshot transaction (REPEATABLE READ where the database has it; an explicit BEGIN on
SQLite, whose driver would otherwise read in autocommit) and fixes its upper
bound U = the source's own clock first. Each incremental table lands the rows with
`W - overlap < cursor <= U`, W being the window end of the last run that was *loaded*
into the warehouse (`extract.watermark`); full-mode tables land everything. Tables
with `reconcile_deletes` also land their full key set (`<table>__keys`) from the same
snapshot. Rows are streamed in batches (bounded memory); types stay exact (NUMERIC
stays decimal, timestamps become UTC). The row reader is pluggable (`read_batches`).

Sharded sources (docs/sharding.md): `extract_sharded_source` reads every physical shard
of a virtual-shard map in parallel, each through `extract_tables(..., shard=ShardScope)`
in its own snapshot on its own database, restricted to the vshards the map gives it,
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
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from core import clock, run_ids
from core.settings import future_tolerance_minutes, sqlalchemy_url
from extract.landing import UnlandableValueError, write_landing_table
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
    Ranges,
    ShardMap,
    ShardMapError,
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
from extract.tables import DEFAULT_TABLES, TableConfig
from extract.watermark import last_loaded_shard_map, last_watermark

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


def arrow_type(sa_type: sa.types.TypeEngine) -> pa.DataType:
    """Map a reflected SQLAlchemy column type to the exact Arrow type we land."""
    if isinstance(sa_type, sa.Boolean):
        return pa.bool_()
    if isinstance(sa_type, sa.Integer):
        return pa.int64()
    if isinstance(sa_type, sa.Float):
        return pa.float64()
    if isinstance(sa_type, sa.Numeric):
        precision = sa_type.precision or 38
        scale = sa_type.scale if sa_type.scale is not None else 10
        return pa.decimal128(min(max(precision, scale + 1), 38), scale)
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
        return lambda v: None if v is None else str(v)
    if pa.types.is_date(arrow):
        return lambda v: None if v is None else (v.date() if isinstance(v, datetime) else v)
    return lambda v: v


# A reader streams the rows of `table` matching `where_sql` (bound `params`) as record
# batches of `schema`; the PostgreSQL fast path plugs in with the same signature.
Reader = Callable[
    [sa.Connection, sa.Table, pa.Schema, str | None, dict[str, Any], int],
    Iterator[pa.RecordBatch],
]


def read_batches(
    conn: sa.Connection,
    table: sa.Table,
    schema: pa.Schema,
    where_sql: str | None,
    params: dict[str, Any],
    batch_size: int,
) -> Iterator[pa.RecordBatch]:
    """Default reader: a streamed SQLAlchemy select, any dialect, ordered by primary key.

    On PostgreSQL it lands what the COPY fast path lands (tests/extract/
    test_reader_agreement.py): a column landed as text whose source type is not text
    (json/jsonb, arrays, bytea, interval, time, uuid, ...) is read as the server's text,
    not as the driver's Python object; `timestamptz` is read at UTC (no session time
    zone can push year 1 or 9999 out of range). A value that cannot be landed fails
    naming the table, the column and the row's key (a date or timestamp outside the
    years 1..9999 or infinite: `_pg_out_of_range`).
    """
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
    if where_sql:
        stmt = stmt.where(sa.text(where_sql).bindparams(**params))
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
            _pg_out_of_range(conn, table, schema, where_sql, params, key_name, exc)
        raise
    finally:
        result.close()


_LANDABLE_DAYS = ("0001-01-01", "10000-01-01")  # the years 1..9999 both readers land


def _pg_out_of_range(
    conn: sa.Connection,
    table: sa.Table,
    schema: pa.Schema,
    where_sql: str | None,
    params: dict[str, Any],
    key_name: str,
    exc: Exception,
) -> None:
    """The driver failed to load a row (psycopg: "timestamp too large (after year 10K)",
    without naming the column or row): find the first date/timestamp outside the years
    1..9999 (or infinite) in the rows read, and raise naming table, column and key."""
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
        if where_sql:
            stmt = stmt.where(sa.text(where_sql).bindparams(**params))
        row = conn.execute(stmt.order_by(key).limit(1)).first()
        if row is not None:
            raise UnlandableValueError(
                f"{table.name}.{field.name}: cannot land value {row[1]!r} of row "
                f"{key_name}={row[0]}: outside the years 1..9999 that both readers land "
                f"(a typo'd year?): {exc.orig if hasattr(exc, 'orig') else exc}"
            ) from exc


_BIND = re.compile(r"(?<![:\w]):(\w+)")


def auto_read_batches(
    conn: sa.Connection,
    table: sa.Table,
    schema: pa.Schema,
    where_sql: str | None,
    params: dict[str, Any],
    batch_size: int,
) -> Iterator[pa.RecordBatch]:
    """PostgreSQL: the binary COPY fast path (extract/pg_copy.py), inside the run's
    snapshot transaction; every other database: the generic reader. Same types, same rows."""
    if conn.dialect.name != "postgresql" or not _copy_reads(conn, table, schema):
        yield from read_batches(conn, table, schema, where_sql, params, batch_size)
        return
    from extract.pg_copy import stream_pg_batches

    yield from stream_pg_batches(
        "",
        table=table.name,
        columns=list(schema.names),
        schema=schema,
        where_sql=_pg_where(where_sql),
        params=dict(params),
        batch_rows=batch_size,
        conn=conn,
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


def _pg_where(where_sql: str | None) -> str:
    """`:name` binds -> `%(name)s` (rendered as driver-quoted literals: COPY takes no binds)."""
    if not where_sql:
        return ""
    return _BIND.sub(lambda m: f"%({m.group(1)})s", where_sql.replace("%", "%%"))


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
    from extract.key_ranges import estimate_rows, extract_parallel, split_key_ranges
    from extract.pg_copy import psycopg_connection, stream_pg_batches

    def read(
        conn: sa.Connection,
        table: sa.Table,
        schema: pa.Schema,
        where_sql: str | None,
        params: dict[str, Any],
        batch_size: int,
    ) -> Iterator[pa.RecordBatch]:
        where = _pg_where(where_sql)
        n = degree
        if not _copy_reads(conn, table, schema):  # logged: the generic reader, one stream
            yield from read_batches(conn, table, schema, where_sql, params, batch_size)
            return
        if min_rows_per_range > 0:
            rows = estimate_rows(psycopg_connection(conn), table.name, where, params)
            n = max(1, min(degree, rows // min_rows_per_range))
        ranges = split_key_ranges(conn, table.name, key, n, where, params) if n > 1 else []
        if len(ranges) < 2:
            yield from auto_read_batches(conn, table, schema, where_sql, params, batch_size)
            return
        clause = (
            f"{conn.dialect.identifier_preparer.quote(key)} between %(_range_lo)s and %(_range_hi)s"
        )
        if where:
            clause += f" and ({where})"

        def read_range(worker: Any, lo: int, hi: int) -> Iterator[pa.RecordBatch]:
            return stream_pg_batches(
                "",
                table=table.name,
                columns=list(schema.names),
                schema=schema,
                where_sql=clause,
                params={**params, "_range_lo": lo, "_range_hi": hi},
                batch_rows=batch_size,
                conn=worker,
                pg_schema=table.schema,
                key=_row_key(table, schema),
            )

        log.info("%s: reading %d key ranges of %s at once", table.name, len(ranges), key)
        yield from extract_parallel(
            url, table.name, ranges, read_range, max_workers=len(ranges), snapshot=snapshot
        )

    return read


def _table_reader(
    conn: sa.Connection,
    table: sa.Table,
    config: TableConfig,
    degree: int,
    *,
    url: str,
    reader: Reader,
    snapshot: str | None,
    min_rows_per_range: int,
) -> Reader:
    """The reader of one table: key ranges at once when it is configured and possible."""
    if degree <= 1:
        return reader
    if snapshot is None or reader is not auto_read_batches:
        log.info(
            "%s: parallel_ranges=%d read as one stream (%s: no shared snapshot across "
            "connections, or a custom reader)",
            config.name,
            degree,
            conn.dialect.name,
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
    return ranged_reader(url, snapshot, config.key, degree, min_rows_per_range)


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
        yield from auto_read_batches(conn, table, schema, None, {}, batch_size)
        return
    stmt = sa.select(table.c[key]).order_by(table.c[key])
    if where is not None:
        stmt = stmt.where(where)
    result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(stmt)
    for rows in result.partitions(batch_size):
        yield pa.RecordBatch.from_arrays(
            [pa.array([r[0] for r in rows], type=schema.field(0).type)], schema=schema
        )


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
    where = [] if scope is None else [sa.text(scope[0]).bindparams(**scope[1])]
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
) -> None:
    """Stop the extract when a table has rows whose cursor is later than U + `tolerance`.

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
    for name, (table, config) in tables.items():
        column = table.c.get(config.cursor)
        if column is None or not isinstance(column.type, sa.DateTime):
            continue
        label(conn, name)
        scope = None
        if shard is not None:
            scope = shard_predicate(
                config.key,
                shard.owned(name),
                conn.dialect.name,
                virtual_shards=shard.virtual_shards,
                param_prefix="fvs",
            )
        count, beyond, newest, samples = _future_rows(conn, table, config, upper, limit, scope)
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
    conn: sa.Connection,
    table: sa.Table,
    schema: pa.Schema,
    config: TableConfig,
    scope: ShardScope,
    lo: datetime | None,
    upper: datetime,
    reader: Reader,
    batch_size: int,
    pass_window: bool = False,
) -> Iterator[pa.RecordBatch]:
    """The shard's rows of `table`: its incremental vshards in (lo, U], its newly assigned
    vshards in (-inf, U] (full-mode tables: every owned vshard, no window). Every read
    is restricted to vshards the run's map gives this shard, in the same snapshot.
    `pass_window`: `reader` is an `aggregates` hook's reader (`window=`, see there)."""
    dialect = conn.dialect.name
    incremental = scope.incremental_vshards.get(config.name, ())
    full = scope.full_vshards.get(config.name, ())
    if config.mode != "incremental" or lo is None:
        reads = [(scope.owned(config.name), None)]
    else:
        reads = [(incremental, lo), (full, None)]
    parts = []
    for ranges, bound in reads:
        if not ranges:
            continue
        pred, pred_params = shard_predicate(
            config.key, ranges, dialect, virtual_shards=scope.virtual_shards
        )
        if config.mode == "incremental":
            where, params = _window_where(conn, table.c[config.cursor], bound, upper)
            window = {"window": (config.cursor, bound, upper)} if pass_window else {}
            batches = _exact_window(
                reader(
                    conn,
                    table,
                    schema,
                    f"{pred} and {where}",
                    {**params, **pred_params},
                    batch_size,
                    **window,
                ),
                config.cursor,
                bound,
                upper,
            )
        else:
            batches = reader(conn, table, schema, pred, pred_params, batch_size)
        parts.append(batches)
    return itertools.chain.from_iterable(parts)


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


def extract_tables(
    url: str,
    *,
    run_id: str,
    landing_root: Path,
    warehouse_path: Path | None,
    configs: Sequence[TableConfig] = DEFAULT_TABLES,
    batch_size: int = 50_000,
    reader: Reader = auto_read_batches,
    shard: ShardScope | None = None,
    manifest_extras: Mapping[str, Any] | None = None,
    parallelism: int = 1,
    parallel_min_rows: int = PARALLEL_MIN_ROWS,
    aggregates: Callable[[Reader], Reader] | None = None,
    read_choice: ReadChoice | None = None,
    future_tolerance: timedelta | None = None,
    accept_drift: bool | Sequence[str] = False,
    source_check: SourceCheckHook | None = None,
) -> dict[str, dict[str, Any]]:
    """Extract `configs` in one snapshot; return the landed manifest per landed table.

    `source_check` (extract/source_identity.py `SourceCheck`) is called once, in the
    run's connection, after the window bound is taken: its fields (the source's
    identity) go into every manifest, and a reason it gives (another source, a restore)
    turns every table to a full read, logged with that reason and recorded as
    `source_changed` (the later steps then rebuild in full).

    Rows whose cursor is after U + `future_tolerance` (default `FUTURE_TOLERANCE_MINUTES`)
    stop the run before anything is landed (`check_future_cursors`, FutureCursorError).

    `read_choice`: how `url` was chosen (`extract.replica.choose_read_url`). Read from
    a replica that lags L seconds, the recorded window end (the next run's watermark)
    is U - L, not U (`replica_safe_window_end`): rows the primary committed in the last
    L seconds may not have been replayed yet, and the next window must cover them.

    `aggregates` (hook, optional) wraps each table's reader: it is called with the same
    connection, filter and bound parameters as the read, inside the run's snapshot, so
    it can total exactly the rows read (quality/reconcile.py `SourceTotals`). Reads of a
    cursor window also pass `window=(cursor, lo, hi)`, the exact bounds the rows are cut
    to after the read: on SQLite the SQL filter is only a superset (`_window_where`).

    Parallel key ranges (PostgreSQL fast path): a table whose degree
    (`config.parallel_ranges`, else `parallelism`) is above 1 is read by that many
    key ranges at once (`ranged_reader`), every reader in the run's own snapshot
    (exported with `pg_export_snapshot()`), so the window bound U, the key sets and
    every range see the same rows. Reads estimated under `parallel_min_rows` rows per
    range are not split. Other databases cannot share a snapshot across connections:
    they read each table in one stream, in the run's transaction.

    `manifest_extras` are recorded in every landed manifest (e.g. the source's identity).

    `accept_drift`: the operator's acceptance of schema drift (`<table>.<column>` specs,
    extract/landing.py `check_schema_drift`); lossless widenings need none.

    Incremental tables land `(W - overlap, U]` (no lower bound before the first load),
    full tables land everything, and `reconcile_deletes` tables also land
    `<table>__keys`. `warehouse_path` is where the watermarks are read (None: none).

    `shard` (one physical shard of a sharded source): every read and the key set are
    restricted to the shard's vshards, the lower bounds are the shard's own (`ShardScope`,
    computed by `extract_sharded_source`), and the shard's fields go into every manifest.
    """
    if shard is None:
        lower = {c.name: window_start(c, warehouse_path) for c in configs}
    else:
        lower = {c.name: shard.lower.get(c.name) for c in configs}
    if future_tolerance is None:
        future_tolerance = timedelta(minutes=future_tolerance_minutes())
    engine = sa.create_engine(sqlalchemy_url(url), connect_args=connect_args(sqlalchemy_url(url)))
    if engine.dialect.name == "sqlite":
        _sqlite_transactions(engine)
    install(engine)  # a wait for the server past SOURCE_READ_STALL_TIMEOUT_S fails
    manifests: dict[str, dict[str, Any]] = {}
    reading = SOURCE_NAME  # the table being read, for a timeout's message
    try:
        isolation = (
            {"isolation_level": "REPEATABLE READ"}
            if engine.dialect.name in ("postgresql", "mysql", "mariadb")
            else {}
        )
        with engine.connect().execution_options(**isolation) as conn, conn.begin():
            upper = source_now(conn)  # first statement: U is not after the snapshot
            if source_check is not None:
                found, why = source_check(conn, configs)
                manifest_extras = {**(manifest_extras or {}), **found}
                if why is not None:
                    log.warning("%s: full re-extract and rebuild", why)
                    configs = [dataclasses.replace(c, mode="full") for c in configs]
                    lower = {c.name: None for c in configs}
                    manifest_extras["source_changed"] = True
                    manifest_extras["source_change_reason"] = why
            window_end = (
                upper if read_choice is None else replica_safe_window_end(upper, read_choice)
            )
            snapshot = _export_snapshot(conn, configs, parallelism, reader)
            metadata = sa.MetaData()
            reflected = {}
            for config in configs:
                label(conn, config.name)
                reading = config.name
                reflected[config.name] = (_reflect(conn, metadata, config), config)
            check_future_cursors(conn, reflected, upper, future_tolerance, shard)
            for config in configs:
                label(conn, config.name)
                reading = config.name
                table = reflected[config.name][0]
                schema = pa.schema([pa.field(c.name, arrow_type(c.type)) for c in table.columns])
                lo = lower[config.name]
                table_reader = _table_reader(
                    conn,
                    table,
                    config,
                    config.degree(parallelism),
                    url=url,
                    reader=reader,
                    snapshot=snapshot,
                    min_rows_per_range=parallel_min_rows,
                )
                if aggregates is not None:
                    table_reader = aggregates(table_reader)
                if shard is not None:
                    batches = _scoped_batches(
                        conn,
                        table,
                        schema,
                        config,
                        shard,
                        lo,
                        upper,
                        table_reader,
                        batch_size,
                        pass_window=aggregates is not None,
                    )
                elif config.mode == "incremental":
                    where, params = _window_where(conn, table.c[config.cursor], lo, upper)
                    window = (
                        {"window": (config.cursor, lo, upper)} if aggregates is not None else {}
                    )
                    batches = _exact_window(
                        table_reader(conn, table, schema, where, params, batch_size, **window),
                        config.cursor,
                        lo,
                        upper,
                    )
                else:
                    batches = table_reader(conn, table, schema, None, {}, batch_size)
                extras = {
                    "mode": config.mode,
                    "key": config.key,
                    "cursor_key": config.cursor,
                    "window_start": _iso(lo),
                    "window_end": _iso(window_end),
                    "overlap_seconds": config.overlap.total_seconds(),
                    "reconcile_deletes": config.reconcile_deletes,
                }
                extras.update(_read_choice_fields(read_choice))
                extras.update(manifest_extras or {})
                if shard is not None:
                    extras.update(shard.manifest)
                    extras["vshards"] = [list(r) for r in shard.owned(config.name)]
                    extras["full_vshards"] = [
                        list(r) for r in shard.full_vshards.get(config.name, ())
                    ]
                manifest = write_landing_table(
                    batches,
                    schema=schema,
                    landing_root=landing_root,
                    source=SOURCE_NAME,
                    table_name=config.name,
                    run_id=run_id,
                    cursor_column=config.cursor if config.cursor in schema.names else None,
                    extra_manifest=extras,
                    accept_drift=accept_drift,
                )
                log.info(
                    "extracted %s.%s (%s, window %s .. %s): %d rows, %d bytes",
                    SOURCE_NAME,
                    config.name,
                    config.mode,
                    _iso(lo),
                    _iso(upper),
                    manifest["rows"],
                    manifest["bytes"],
                )
                manifests[config.name] = manifest
                if config.reconcile_deletes:
                    keys_name = f"{config.name}__keys"
                    key_schema = pa.schema(
                        [pa.field(config.key, arrow_type(table.c[config.key].type))]
                    )
                    key_where = None
                    key_extras: dict[str, Any] = {
                        "mode": "key_set",
                        "key": config.key,
                        "of_table": config.name,
                        "window_end": _iso(window_end),
                    }
                    key_extras.update(manifest_extras or {})
                    if shard is not None:
                        key_where = shard_filter(
                            table.c[config.key], shard.owned(config.name), shard.virtual_shards
                        )
                        key_extras.update(shard.manifest)
                        key_extras["vshards"] = [list(r) for r in shard.owned(config.name)]
                    manifests[keys_name] = write_landing_table(
                        _key_batches(conn, table, config.key, key_schema, batch_size, key_where),
                        schema=key_schema,
                        landing_root=landing_root,
                        source=SOURCE_NAME,
                        table_name=keys_name,
                        run_id=run_id,
                        extra_manifest=key_extras,
                    )
                    log.info(
                        "extracted %s.%s: %d keys",
                        SOURCE_NAME,
                        keys_name,
                        manifests[keys_name]["rows"],
                    )
    except Exception as exc:
        # A read that timed out closed its connection: the rollback then fails too, and
        # that error would hide the one that names the table and the setting.
        raise_source_timeout(exc)
        raise_statement_timeout(exc, reading)
        raise
    finally:
        engine.dispose()
    return manifests


# --------------------------------------------------------------------------- sharded


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value


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


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


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


def extract_sharded_source(
    shard_map: ShardMap,
    *,
    run_id: str,
    landing_root: Path,
    warehouse_path: Path | None,
    configs: Sequence[TableConfig] = DEFAULT_TABLES,
    max_workers: int = 8,
    batch_size: int = 50_000,
    reader: Reader = auto_read_batches,
    parallelism: int = 1,
    parallel_min_rows: int = PARALLEL_MIN_ROWS,
    aggregates: Callable[[Reader], Reader] | None = None,
    replica_max_lag_seconds: float = 300.0,
    replica_on_lag: OnLag = "primary",
    lag_fn: LagFn = replication_lag_seconds,
    accept_drift: bool | Sequence[str] = False,
) -> dict[str, Any]:
    """Extract every physical shard of `shard_map` in parallel into the landing zone.

    Replicas: a shard with a `replica_url` / `replica_conn_id` is read from its replica
    when that replica's lag (`lag_fn`, measured per shard right before its snapshot) is
    at most the shard's `replica_max_lag_seconds` (default: `replica_max_lag_seconds`);
    otherwise from the shard's primary, or the shard fails with `ReplicaLagError`
    (its `replica_on_lag`, default `replica_on_lag`), which fails the run naming it.
    The shard's recorded window end is lag-corrected (`extract_tables(read_choice=)`).

    `aggregates`: the `extract_tables` hook, for every shard (it must be thread-safe).

    `parallelism` / `parallel_min_rows`: key ranges per table within each shard (see
    `extract_tables`); shards x ranges connections may be open at once.

    Each shard: one snapshot transaction on its own database (`extract_tables` with its
    `ShardScope`), landed as run `<run_id>.shard-<name>`. Once every shard has landed,
    the run record (`shard_run_record_path`) lists them with the run's map; before,
    an earlier record of the same run id is removed, so a run with a failed shard is
    never loadable. A failure raises `ShardExtractError` naming every failed shard.

    Returns {"map_version", "shards": {name: {table: rows}}, "rows": {table: rows}}.
    """
    record_path = shard_run_record_path(landing_root, run_id)
    record_path.unlink(missing_ok=True)
    extract_id = uuid.uuid4().hex
    public = shard_map.to_public_dict()
    scopes = shard_scopes(
        shard_map,
        warehouse_path=warehouse_path,
        configs=configs,
        extra_manifest={"shard_map": public, "extract_id": extract_id, "logical_run_id": run_id},
    )
    for scope in scopes.values():
        full = {t: r for t, r in scope.full_vshards.items() if r}
        if full:
            log.info(
                "shard %s: vshards read in full (new to this shard since its last load): %s",
                scope.name,
                {t: [list(x) for x in r] for t, r in full.items()},
            )

    def read_fn(name: str, url: str, _sql: str, _params: dict[str, int]) -> dict[str, Any]:
        # the per-table predicates come from the shard's scope (same vshards as _sql)
        physical = shard_map.shard(name)
        choice = choose_read_url(
            url,
            physical.resolve_replica_url(),
            max_lag_seconds=_first(physical.replica_max_lag_seconds, replica_max_lag_seconds),
            on_lag=_first(physical.replica_on_lag, replica_on_lag),
            lag_fn=lag_fn,
        )
        if choice.reason != NO_REPLICA:
            log.info("shard %s reads from the %s: %s", name, _where_read(choice), choice.reason)
        return extract_tables(
            choice.url,
            run_id=shard_run_id(run_id, name),
            landing_root=landing_root,
            warehouse_path=warehouse_path,
            configs=configs,
            batch_size=batch_size,
            reader=reader,
            shard=scopes[name],
            parallelism=parallelism,
            parallel_min_rows=parallel_min_rows,
            aggregates=aggregates,
            read_choice=choice,
            accept_drift=accept_drift,
        )

    results = extract_sharded(shard_map, read_fn, max_workers=max_workers)
    shards = []
    for res in results:
        shards.append(
            {
                "name": res.shard,
                "landing_run_id": shard_run_id(run_id, res.shard),
                "vshards": [list(r) for r in res.vshards],
                "seconds": round(res.seconds, 3),
                "tables": {
                    t: {"rows": m["rows"], "checksum_sha256": m["checksum_sha256"]}
                    for t, m in res.value.items()
                },
            }
        )
    _write_json_atomically(
        record_path,
        {
            "source": SOURCE_NAME,
            "run_id": run_id,
            "extract_id": extract_id,
            "shard_map": public,
            "shards": shards,
            "written_at": clock.now().isoformat(),
        },
    )
    per_shard = {s["name"]: {t: v["rows"] for t, v in s["tables"].items()} for s in shards}
    totals: dict[str, int] = {}
    for tables in per_shard.values():
        for t, n in tables.items():
            totals[t] = totals.get(t, 0) + n
    log.info(
        "sharded extract run=%s (map v%d, %d shards): %s",
        run_id,
        shard_map.version,
        len(shards),
        per_shard,
    )
    return {"map_version": shard_map.version, "shards": per_shard, "rows": totals}
