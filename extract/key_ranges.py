"""Parallel extraction of a large table by key ranges, under one consistent snapshot.

`split_key_ranges` cuts the integer key space `[min, max]` of a table (rows matching a
filter) into at most `degree` contiguous, non-overlapping `[lo, hi]` ranges holding
roughly equal numbers of rows:

- PostgreSQL: exact `min`/`max` (the key's index), the inner boundaries from
  `percentile_disc` over the keys, on a `TABLESAMPLE SYSTEM` sample of about
  200k rows when the table is larger (balance only needs approximate quantiles;
  coverage never depends on them: the ranges always tile `[min, max]`).
- Other databases: equal-width ranges by `min`/`max` arithmetic.

`extract_parallel` runs one reader per range in threads and hands every batch to the
single consumer (the landing writer) through a bounded queue, so memory stays bounded
by `max_workers` readers plus a few batches. On PostgreSQL all readers share one
snapshot: a coordinator transaction (or the caller's, via `snapshot=`) runs
`pg_export_snapshot()` and every worker starts its REPEATABLE READ transaction with
`SET TRANSACTION SNAPSHOT`, so all ranges see exactly the same committed rows, as if
read by one transaction. On other databases (no snapshot export) the ranges are read
**sequentially in one transaction** (REPEATABLE READ where the database has it):
the same consistency, no parallelism.

By default the first range is read from the smallest possible key and the last up to
the largest (`open_ends=True`), so a key that appeared between the split and the
snapshot is still read exactly once.

Placeholders of a `RowFilter`: `%s` / `%(name)s` on PostgreSQL (psycopg connection, values
rendered by the driver as literals, see `extract.pg_copy.render_where`); `:name` with a
mapping on a SQLAlchemy connection to another database (real bind parameters).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from core.settings import sqlalchemy_url
from extract.pg_copy import connect, psycopg_connection, render_where

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "ParallelRead",
    "RowFilter",
    "estimate_rows",
    "extract_parallel",
    "split_key_ranges",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
SAMPLE_ROWS = 200_000  # quantiles are taken on a sample of about this many rows


def _is_pg(conn: Any) -> bool:
    if isinstance(conn, psycopg.Connection):
        return True
    return isinstance(conn, sa.Connection) and conn.dialect.name == "postgresql"


@dataclass(frozen=True)
class RowFilter:
    """The rows a split covers: `sql` with the placeholders of its `params` ("": all)."""

    sql: str = ""
    params: Sequence[Any] | Mapping[str, Any] = ()


def split_key_ranges(
    conn: Any,
    table: str,
    key: str,
    degree: int,
    where: RowFilter = RowFilter(),
    *,
    min_rows_per_range: int = 0,
) -> list[tuple[int, int]]:
    """Contiguous `[lo, hi]` ranges tiling `[min(key), max(key)]`; [] for no rows.

    `min_rows_per_range` (PostgreSQL): lower the degree so that each range holds at
    least that many rows by the planner's estimate; a small read (an incremental
    slice) then gets one range, and the caller reads it with one plain stream
    (parallel readers cost a snapshot export and a connection each).
    """
    if degree < 1:
        raise ValueError(f"degree={degree!r} must be >= 1")
    if min_rows_per_range > 0 and degree > 1 and _is_pg(conn):
        rows = estimate_rows(psycopg_connection(conn), table, where.sql, where.params)
        degree = max(1, min(degree, rows // min_rows_per_range))
    if _is_pg(conn):
        lo, hi, bounds = _pg_bounds(psycopg_connection(conn), table, key, degree, where)
    else:
        lo, hi, bounds = _generic_bounds(conn, table, key, degree, where)
    if lo is None:
        return []
    return _tile(int(lo), int(hi), bounds)


def estimate_rows(
    conn: psycopg.Connection,
    table: str,
    where_sql: str = "",
    params: Sequence[Any] | Mapping[str, Any] = (),
) -> int:
    """The planner's estimate of the rows of `table` matching `where_sql` (no scan)."""
    where = (
        sql.SQL(" WHERE ({})").format(render_where(where_sql, params))
        if where_sql.strip()
        else sql.SQL("")
    )
    query = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {}{}").format(sql.Identifier(table), where)
    plan = conn.execute(query).fetchone()[0]
    if isinstance(plan, str):
        import json

        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def _tile(lo: int, hi: int, bounds: Iterable[int]) -> list[tuple[int, int]]:
    """[lo, b1], [b1 + 1, b2], ..., [bk + 1, hi] over the distinct bounds within [lo, hi)."""
    ranges = []
    start = lo
    for b in sorted({int(b) for b in bounds if b is not None and lo <= b < hi}):
        ranges.append((start, b))
        start = b + 1
    ranges.append((start, hi))
    return ranges


def _pg_bounds(
    conn: psycopg.Connection, table: str, key: str, degree: int, row_filter: RowFilter
) -> tuple[Any, Any, list[int]]:
    target = sql.Identifier(table)
    k = sql.Identifier(key)
    where = (
        sql.SQL(" WHERE ({})").format(render_where(row_filter.sql, row_filter.params))
        if row_filter.sql.strip()
        else sql.SQL("")
    )
    with conn.cursor() as cur:
        if row_filter.sql.strip():
            # OFFSET 0 fences off the min/max-by-key-index rewrite, which would walk the
            # key index past every row the filter rejects (slow for a recent slice).
            bounds_sql = "SELECT min({k}), max({k}) FROM (SELECT {k} FROM {t}{w} OFFSET 0) s"
        else:
            bounds_sql = "SELECT min({k}), max({k}) FROM {t}"
        cur.execute(sql.SQL(bounds_sql).format(k=k, t=target, w=where))
        lo, hi = cur.fetchone()
        if lo is None or degree == 1 or lo == hi:
            return lo, hi, []
        cur.execute(
            "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
            (target.as_string(conn),),
        )
        row = cur.fetchone()
        estimate = row[0] if row else -1
        sample = sql.SQL("")
        if estimate and estimate > SAMPLE_ROWS:
            pct = max(0.01, min(100.0, 100.0 * SAMPLE_ROWS / estimate))
            sample = sql.SQL(" TABLESAMPLE SYSTEM ({})").format(sql.Literal(pct))
        fractions = [i / degree for i in range(1, degree)]
        cur.execute(
            sql.SQL(
                "SELECT percentile_disc({f}::float8[]) WITHIN GROUP (ORDER BY {k}) FROM {t}{s}{w}"
            ).format(f=sql.Literal(fractions), k=k, t=target, s=sample, w=where)
        )
        bounds = [b for b in cur.fetchone()[0] or [] if b is not None]
    if not bounds:  # an empty sample (stale statistics): equal-width ranges
        bounds = _arithmetic(int(lo), int(hi), degree)
    return lo, hi, bounds


def _arithmetic(lo: int, hi: int, degree: int) -> list[int]:
    width = hi - lo + 1
    return [lo + width * i // degree - 1 for i in range(1, degree)]


def _generic_bounds(
    conn: sa.Connection, table: str, key: str, degree: int, row_filter: RowFilter
) -> tuple[Any, Any, list[int]]:
    t = sa.table(table, sa.column(key))
    stmt = sa.select(sa.func.min(t.c[key]), sa.func.max(t.c[key])).select_from(t)
    if row_filter.sql.strip():
        stmt = stmt.where(sa.text(row_filter.sql))
    params = row_filter.params
    lo, hi = conn.execute(stmt, dict(params) if isinstance(params, Mapping) else {}).one()
    if lo is None:
        return None, None, []
    return lo, hi, _arithmetic(int(lo), int(hi), degree)


# ----------------------------------------------------------------------------- parallel

_DONE = object()


@dataclass(frozen=True)
class ParallelRead:
    """One table read by key ranges under one snapshot (`extract_parallel`).

    `snapshot`: an id from `pg_export_snapshot()` of the caller's open transaction, to
    read in the caller's snapshot; by default a coordinator transaction exports one.
    `open_ends`: the first range starts at the smallest key, the last ends at the
    largest. `queue_batches`: batches held between the readers and the consumer
    (default: one a reader)."""

    url: str
    table: str
    ranges: Sequence[tuple[int, int]]
    max_workers: int
    snapshot: str | None = None
    open_ends: bool = True
    queue_batches: int | None = None


RangeFn = Callable[[Any, int, int], Iterable[Any]]


def extract_parallel(read: ParallelRead, fn: RangeFn) -> Iterator[Any]:
    """Yield the batches of `fn(conn, lo, hi)` over all `read.ranges`, one snapshot for all.

    `fn` reads one range on the connection it is given (PostgreSQL: a psycopg
    connection whose transaction already imported the snapshot; elsewhere: a SQLAlchemy
    connection). Batches come in no particular order across ranges.
    """
    if read.max_workers < 1:
        raise ValueError(f"max_workers={read.max_workers!r} must be >= 1")
    work = _work(read)
    if not work:
        return
    url = sqlalchemy_url(read.url)
    if sa.make_url(url).get_backend_name() != "postgresql":
        yield from _sequential(url, read.table, work, fn)
        return
    coordinator = None
    snapshot = read.snapshot
    if snapshot is None:
        coordinator, snapshot = _export_snapshot(url)
    try:
        resolved = dataclasses.replace(read, url=url, snapshot=snapshot)
        yield from _RangeReaders(resolved, work, fn).batches()
    finally:
        if coordinator is not None:
            coordinator.close()


def _work(read: ParallelRead) -> list[tuple[int, int]]:
    """The ranges to read, the outer ends opened to the bigint range (`open_ends`)."""
    work = [(int(lo), int(hi)) for lo, hi in read.ranges]
    if work and read.open_ends:
        work[0] = (INT64_MIN, work[0][1])
        work[-1] = (work[-1][0], INT64_MAX)
    return work


def _export_snapshot(url: str) -> tuple[psycopg.Connection, str]:
    """A coordinator transaction (kept open by the caller) and the snapshot it exports."""
    coordinator = connect(url)
    coordinator.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    snapshot = coordinator.execute("SELECT pg_export_snapshot()").fetchone()[0]
    return coordinator, snapshot


class _RangeReaders:
    """The reader threads of one PostgreSQL parallel read: each imports the snapshot and
    takes ranges off a shared list until none is left; their batches, errors and ends
    go through one bounded queue to the consumer (`batches`)."""

    def __init__(self, read: ParallelRead, work: Sequence[tuple[int, int]], fn: RangeFn) -> None:
        self.read = read
        self.fn = fn
        self.todo: queue.Queue = queue.Queue()
        for item in work:
            self.todo.put(item)
        self.workers = min(read.max_workers, len(work))
        self.out: queue.Queue = queue.Queue(maxsize=read.queue_batches or self.workers)
        self.stop = threading.Event()

    def put(self, item: Any) -> bool:
        """Queue `item` for the consumer; False once the read is stopped."""
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker(self) -> None:
        try:
            with connect(self.read.url) as conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                conn.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self.read.snapshot))
                )
                if self._read_ranges(conn):
                    conn.rollback()  # read only: nothing to keep
        except BaseException as exc:  # handed to the consumer
            self.put(exc)
        finally:
            self.put(_DONE)

    def _read_ranges(self, conn: psycopg.Connection) -> bool:
        """Read ranges until none is left (True) or the read is stopped (False)."""
        while not self.stop.is_set():
            try:
                lo, hi = self.todo.get_nowait()
            except queue.Empty:
                break
            for batch in self.fn(conn, lo, hi):
                if not self.put(batch):
                    return False
        return True

    def batches(self) -> Iterator[Any]:
        """Start the readers and yield their batches; the first error is raised."""
        threads = [
            threading.Thread(target=self.worker, name=f"extract-{self.read.table}-{i}", daemon=True)
            for i in range(self.workers)
        ]
        try:
            for t in threads:
                t.start()
            running = self.workers
            while running:
                item = self.out.get()
                if item is _DONE:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            self._stop(threads)

    def _stop(self, threads: Sequence[threading.Thread]) -> None:
        self.stop.set()
        for t in threads:
            while t.is_alive():
                try:  # unblock a producer waiting on a full queue
                    self.out.get_nowait()
                except queue.Empty:
                    t.join(0.05)


def _sequential(
    url: str,
    table: str,
    work: Sequence[tuple[int, int]],
    fn: RangeFn,
) -> Iterator[Any]:
    """Non-PostgreSQL: the ranges one after the other, in one transaction."""
    engine = sa.create_engine(url)
    try:
        options = (
            {"isolation_level": "REPEATABLE READ"}
            if engine.dialect.name in ("mysql", "mariadb")
            else {}
        )
        with engine.connect().execution_options(**options) as conn, conn.begin():
            for lo, hi in work:
                yield from fn(conn, lo, hi)
    finally:
        engine.dispose()
