"""Verify a new table against the old one through the mapping, work pushed into SQL.

One scan per side (both sides at once, in threads) computes per key bucket
`count(*)` and the exact sum of a 60-bit hash of each row's canonical text (numeric
on PostgreSQL; a Python aggregate on SQLite, whose sum() would overflow). Equal buckets are done;
a differing bucket is split again (`factor` sub-buckets, an index range scan), or,
once it holds at most `leaf_rows` rows, its rows are fetched as (key, one short hash
per column) to name the missing, extra and changed rows and the columns that differ.
A bucket that is empty on one side is listed by keys alone.

The canonical text is the same on both sides through the mapping: integers as
decimal text, money in cents for `cents` columns, other numerics as
`trim_scale(x)::text`, timestamps as UTC epoch seconds with 6 decimals, blank → NULL
for `text` columns, text values length-prefixed and NULL as `n`, so no two rows share
a text.
PostgreSQL computes it natively (md5); SQLite uses the functions `migrate.db`
registers on its connections. Memory is bounded by the bucket lists and one leaf.
Each PostgreSQL side reads one REPEATABLE READ snapshot for the whole verification.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from migrate.db import make_engine, plan_or_fields, reflect_table, require_columns
from migrate.mapping import BLANK_CHARS, MappingError, TableMapping

log = logging.getLogger(__name__)
T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class VerifyPlan:
    """How a verification bisects: `buckets` key buckets in the first scan, `factor`
    sub-buckets per differing bucket, a differing bucket of at most `leaf_rows` rows
    compared row by row; at most `max_listed` keys listed per kind of difference (the
    counts are complete); `parallel`: both sides queried at once (two threads)."""

    buckets: int = 1024
    factor: int = 32
    leaf_rows: int = 2048
    max_listed: int = 100_000
    parallel: bool = True


@dataclass
class VerifyResult:
    """What one verification found. Lists hold at most `max_listed` keys each; the
    `*_count` fields are always complete."""

    table: str
    rows_old: int
    rows_new: int
    rows_compared: int
    missing: list = field(default_factory=list)  # keys in old, not in new
    extra: list = field(default_factory=list)  # keys in new, not in old
    changed: list[tuple[Any, list[str]]] = field(default_factory=list)  # key, old columns
    seconds: float = 0.0
    missing_count: int = 0
    extra_count: int = 0
    changed_count: int = 0
    queries: int = 0

    @property
    def clean(self) -> bool:
        return (
            self.missing_count == 0
            and self.extra_count == 0
            and self.changed_count == 0
            and self.rows_old == self.rows_new
        )

    def sample_keys(self, limit: int = 20) -> dict[str, list]:
        """A few keys of each kind of difference (for ops.migration_checks)."""
        return {
            "missing": self.missing[:limit],
            "extra": self.extra[:limit],
            "changed": [[k, cols] for k, cols in self.changed[:limit]],
        }

    def summary(self) -> str:
        verdict = "clean" if self.clean else "DIFFERENT"
        return (
            f"{self.table}: {verdict}: old {self.rows_old:,} rows, new {self.rows_new:,}; "
            f"missing {self.missing_count}, extra {self.extra_count}, "
            f"changed {self.changed_count} ({self.seconds:.2f} s)"
        )


# ------------------------------------------------------------------ canonical SQL


def _type_class(type_: sa.types.TypeEngine) -> str:
    if isinstance(type_, sa.Boolean):
        return "bool"
    if isinstance(type_, sa.Integer):
        return "int"
    if isinstance(type_, sa.Float):
        return "float"
    if isinstance(type_, sa.Numeric):
        return "num"
    if isinstance(type_, sa.DateTime):
        return "ts"
    return "text"


def _canon_pg(col: str, type_class: str, kind: str) -> str:
    """PostgreSQL text of one value (NULL stays NULL)."""
    if kind == "cents" and type_class in ("num", "float"):
        return f"(({col}) * 100)::bigint::text"
    if type_class == "ts":
        return f"extract(epoch from {col})::text"  # numeric, always 6 decimals
    if type_class == "num":
        return f"trim_scale({col})::text"
    if type_class == "bool":
        return f"(CASE WHEN {col} THEN '1' ELSE '0' END)"
    if kind == "text":
        return f"(CASE WHEN btrim({col}::text, E' \\t\\n\\r\\f\\v') = '' THEN NULL ELSE {col}::text END)"
    return f"{col}::text"


def _canon_sqlite(col: str, type_class: str, kind: str) -> str:
    if kind == "cents" and type_class in ("num", "float"):
        return f"ns_cents({col})"
    if type_class == "ts":
        return f"ns_epoch({col})"
    if type_class == "num":
        return f"ns_num({col})"
    if type_class == "bool":
        return f"(CASE WHEN {col} THEN '1' ELSE '0' END)"
    blank = ",".join(str(ord(c)) for c in BLANK_CHARS)
    if kind == "text":
        return f"(CASE WHEN trim({col}, char({blank})) = '' THEN NULL ELSE {col} END)"
    return f"CAST({col} AS TEXT)"


def _field(text: str, is_text: bool, pg: bool) -> str:
    """One value in the row text: text length-prefixed (no separator can be forged),
    other types as they are (they never contain `|` or `n`); NULL as `n`."""
    if not is_text:
        return f"coalesce({text}, 'n')"
    length = f"length({text})::text" if pg else f"length({text})"
    return f"coalesce({length} || ':' || {text}, 'n')"


class _Side:
    """One database's half of a verification: its SQL and its connection."""

    def __init__(
        self, engine: Engine, table: str, key: str, columns: list[tuple[str, str]]
    ) -> None:
        """`columns`: (column name, mapping kind) in mapping order."""
        self.engine = engine
        dialect = engine.dialect.name
        if dialect not in ("postgresql", "sqlite"):
            raise MappingError(f"verify supports PostgreSQL and SQLite, not {dialect}")
        self.pg = dialect == "postgresql"
        reflected = reflect_table(engine, table)
        require_columns(reflected, [key, *(c for c, _ in columns)], engine)
        if _type_class(reflected.c[key].type) != "int":
            raise MappingError(f"table {table!r}: key {key!r} must be an integer column")
        quote = engine.dialect.identifier_preparer.quote
        self.table = quote(table)
        self.key = quote(key)
        canon = _canon_pg if self.pg else _canon_sqlite
        fields = []
        for name, kind in columns:
            type_class = _type_class(reflected.c[name].type)
            text = canon(quote(name), type_class, kind)
            fields.append(_field(text, type_class == "text", self.pg))
        key_text = f"{self.key}::text" if self.pg else f"CAST({self.key} AS TEXT)"
        row_text = " || '|' || ".join([key_text, *fields])
        if self.pg:
            self.row_hash = f"('x' || substr(md5({row_text}), 1, 15))::bit(60)::bigint"
            self.hash_sum = "sum(h)"  # numeric: exact, and h is evaluated once
            self.col_hashes = [f"substr(md5({f}), 1, 16)" for f in fields]
        else:
            self.row_hash = f"ns_h60({row_text})"
            self.hash_sum = "ns_hsum(h)"  # Python ints: no overflow of SQLite's sum()
            self.col_hashes = [f"ns_md5_16({f})" for f in fields]
        self.conn: Connection | None = None
        self.queries = 0

    def open(self) -> None:
        conn = self.engine.connect()
        if self.pg:  # one snapshot for every query of this verification
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            conn.begin()
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            # the bucket aggregate sorts ~all rows when run in parallel: keep it in memory
            conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None

    def _run(self, sql: str, **params: Any) -> sa.CursorResult:
        assert self.conn is not None
        self.queries += 1
        return self.conn.execute(sa.text(sql), params)

    def bounds(self) -> tuple[int | None, int | None]:
        row = self._run(f"SELECT min({self.key}), max({self.key}) FROM {self.table}").one()
        return row[0], row[1]

    def buckets(self, lo: int, hi: int, width: int) -> dict[int, tuple[int, int]]:
        """bucket → (rows, exact sum of the 60-bit row hashes) over [lo, hi)."""
        sql = (
            f"SELECT b, count(*), {self.hash_sum} FROM ("
            f"SELECT ({self.key} - :lo) / :w AS b, {self.row_hash} AS h FROM {self.table} "
            f"WHERE {self.key} >= :lo AND {self.key} < :hi) s GROUP BY b"
        )
        return {int(b): (int(n), int(h)) for b, n, h in self._run(sql, lo=lo, hi=hi, w=width)}

    def rows(self, lo: int, hi: int) -> dict[int, tuple[str, ...]]:
        """key → per-column hashes for the (few) rows in [lo, hi)."""
        cols = ", ".join([self.key, *self.col_hashes])
        sql = f"SELECT {cols} FROM {self.table} WHERE {self.key} >= :lo AND {self.key} < :hi"
        return {int(r[0]): tuple(r[1:]) for r in self._run(sql, lo=lo, hi=hi)}

    def keys(self, lo: int, hi: int) -> Iterator[int]:
        sql = (
            f"SELECT {self.key} FROM {self.table} WHERE {self.key} >= :lo AND {self.key} < :hi "
            f"ORDER BY {self.key}"
        )
        for (key,) in self._run(sql, lo=lo, hi=hi):
            yield int(key)


# ------------------------------------------------------------------ the comparison


class _Comparison:
    def __init__(
        self,
        old: _Side,
        new: _Side,
        mapping: TableMapping,
        pool: ThreadPoolExecutor | None,
        plan: VerifyPlan,
    ) -> None:
        self.old, self.new, self.mapping, self.pool = old, new, mapping, pool
        self.factor, self.leaf_rows, self.max_listed = plan.factor, plan.leaf_rows, plan.max_listed
        self.result = VerifyResult(mapping.name, 0, 0, 0)

    def both(self, fn_old: Callable[[], T], fn_new: Callable[[], U]) -> tuple[T, U]:
        if self.pool is None:
            return fn_old(), fn_new()
        fut = self.pool.submit(fn_new)
        return fn_old(), fut.result()

    def _add(self, kind: str, item: Any) -> None:
        listed = getattr(self.result, kind)
        setattr(self.result, f"{kind}_count", getattr(self.result, f"{kind}_count") + 1)
        if len(listed) < self.max_listed:
            listed.append(item)

    def run(self, lo: int, hi: int, width: int, first: bool = False) -> None:
        """Compare [lo, hi) in buckets of `width` keys; descend where they differ."""
        old_b, new_b = self.both(
            lambda: self.old.buckets(lo, hi, width), lambda: self.new.buckets(lo, hi, width)
        )
        if first:
            self.result.rows_old = sum(v[0] for v in old_b.values())
            self.result.rows_new = sum(v[0] for v in new_b.values())
        for bucket in sorted(set(old_b) | set(new_b)):
            a, b = old_b.get(bucket, (0, 0)), new_b.get(bucket, (0, 0))
            if a == b:
                continue
            blo = lo + bucket * width
            bhi = min(blo + width, hi)
            if b[0] == 0:
                for key in self.old.keys(blo, bhi):
                    self._add("missing", key)
            elif a[0] == 0:
                for key in self.new.keys(blo, bhi):
                    self._add("extra", key)
            elif max(a[0], b[0]) <= self.leaf_rows or width == 1:
                self.leaf(blo, bhi)
            else:
                self.run(blo, bhi, max(1, math.ceil((bhi - blo) / self.factor)))

    def leaf(self, lo: int, hi: int) -> None:
        old_rows, new_rows = self.both(lambda: self.old.rows(lo, hi), lambda: self.new.rows(lo, hi))
        names = [c.old for c in self.mapping.columns]
        for key in sorted(set(old_rows) | set(new_rows)):
            a, b = old_rows.get(key), new_rows.get(key)
            if b is None:
                self._add("missing", key)
            elif a is None:
                self._add("extra", key)
            else:
                # position 0 of the hashes is the first mapped column
                diff = [names[i] for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
                if diff:
                    self._add("changed", (key, diff))


def verify_table(
    old_url: str | Engine,
    new_url: str | Engine,
    mapping: TableMapping,
    plan: VerifyPlan | None = None,
    **options: Any,
) -> VerifyResult:
    """Compare `mapping.old_table` (old) with `mapping.new_table` (new) row by row.

    `plan`: how it bisects (default `VerifyPlan()`); or its fields as keyword `options`
    (`buckets=4, leaf_rows=8`), not both.
    """
    plan = plan_or_fields(VerifyPlan, plan, options, "verify_table")
    started = time.perf_counter()
    old_engine = old_url if isinstance(old_url, Engine) else make_engine(old_url)
    new_engine = new_url if isinstance(new_url, Engine) else make_engine(new_url)
    cols = mapping.columns
    old = _Side(old_engine, mapping.old_table, mapping.old_key, [(c.old, c.kind) for c in cols])
    new = _Side(new_engine, mapping.new_table, mapping.new_key, [(c.new, "same") for c in cols])
    pool = ThreadPoolExecutor(max_workers=1) if plan.parallel else None
    try:
        old.open()
        new.open()
        cmp = _Comparison(old, new, mapping, pool, plan)
        (omin, omax), (nmin, nmax) = cmp.both(old.bounds, new.bounds)
        lows = [v for v in (omin, nmin) if v is not None]
        if lows:
            lo = min(lows)
            hi = max(v for v in (omax, nmax) if v is not None) + 1
            cmp.run(lo, hi, max(1, math.ceil((hi - lo) / plan.buckets)), first=True)
        result = cmp.result
    finally:
        old.close()
        new.close()
        if pool is not None:
            pool.shutdown()
        if not isinstance(old_url, Engine):
            old_engine.dispose()
        if not isinstance(new_url, Engine):
            new_engine.dispose()
    result.rows_compared = max(result.rows_old, result.rows_new)
    result.queries = old.queries + new.queries
    result.seconds = time.perf_counter() - started
    log.info("verify %s", result.summary())
    return result
