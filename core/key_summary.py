"""Per-bucket summaries of an integer key set: the one definition the extract and the loader share.

A table's keys are cut into buckets of a fixed width W (`bucket = floor(key / W)`, so
the geometry depends on nothing but W); per bucket the summary is

- `n`: how many keys,
- `s1`: the sum of the keys' offsets in the bucket (`key mod W`, in [0, W)),
- `s2`: the sum of a square hash of the keys (`((key % P) * (key % P)) % Q`).

Two key sets with the same summary in a bucket hold the same keys there, up to a hash
collision (a delete and an insert in one bucket must agree on count, offset sum and
hash sum to hide each other). The extract computes it at the source (PostgreSQL,
MySQL/MariaDB, SQLite), the loader in the warehouse (DuckDB, PostgreSQL), from the same
SQL: integer division truncates on every engine, so the floor of a negative key is
written with truncating divisions of non-negative numbers only, and `%` follows the
dividend's sign on every engine. The sums never overflow a bigint: at most W offsets
below W, at most W hashes below Q. Keys are assumed unique (a table's key).

Values are bound parameters (`:w`, `:p`, `:q`), SQLAlchemy `text()`'s form, in which the
extract executes the SQL; `qmark` has SQLAlchemy's compiler render the same SQL with the
`?` placeholders of a warehouse session and the values in their order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

__all__ = [
    "HASH_P",
    "HASH_Q",
    "WIDTH",
    "bucket_bounds",
    "bucket_sql",
    "changed_buckets",
    "intervals",
    "params",
    "qmark",
    "summary_sql",
]

WIDTH = 512  # keys a bucket spans: ~1/512 of the keys are summaries, not keys
HASH_P = 2147483629  # a prime below 2**31: the square of a residue fits a bigint
HASH_Q = 2147483587
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# engine -> (integer division of non-negative integers, bigint cast of a bound value or
# sum, cast of a per-key term below 2**31: PostgreSQL sums 4-byte integers in a bigint,
# numbers of 8 bytes in a slower numeric)
_DIALECTS: dict[str, tuple[str, str, str]] = {
    "postgresql": ("/", "cast({} as bigint)", "cast({} as integer)"),
    "postgres": ("/", "cast({} as bigint)", "cast({} as integer)"),
    "duckdb": ("//", "cast({} as bigint)", "cast({} as integer)"),
    "mysql": ("div", "cast({} as signed)", "{}"),
    "mariadb": ("div", "cast({} as signed)", "{}"),
    "sqlite": ("/", "{}", "{}"),
}


def supported(dialect: str) -> bool:
    """Whether the summaries can be computed on this engine."""
    return dialect in _DIALECTS


def _engine(dialect: str) -> tuple[str, str, str]:
    try:
        return _DIALECTS[dialect]
    except KeyError:
        raise ValueError(
            f"key summaries: no integer division known for engine {dialect!r}; "
            f"known: {', '.join(sorted(_DIALECTS))}"
        ) from None


def bucket_sql(key: str, dialect: str) -> str:
    """`floor(key / :w)` in the engine's SQL; `key` is a quoted column expression."""
    div, cast, _ = _engine(dialect)
    w = cast.format(":w")
    return f"(case when {key} >= 0 then {key} {div} {w} else -((-({key} + 1)) {div} {w}) - 1 end)"


def summary_sql(key: str, relation: str, dialect: str) -> str:
    """`select b, n, s1, s2 from <relation> group by b`: one row per bucket holding a
    key, in no order. `key` is a quoted column of `relation` (a table or `(subquery) x`).
    A NULL key is in no bucket (the landed gate stops a run that lands one)."""
    _, cast, small = _engine(dialect)
    w, p, q = (cast.format(f":{name}") for name in ("w", "p", "q"))
    residue = f"({key} % {p})"
    s1 = cast.format("sum({})".format(small.format(f"(({key} % {w}) + {w}) % {w}")))
    s2 = cast.format("sum({})".format(small.format(f"({residue} * {residue}) % {q}")))
    return (
        f"select {bucket_sql(key, dialect)} as b, count(*) as n, {s1} as s1, {s2} as s2 "
        f"from {relation} where {key} is not null group by 1"
    )


def params(width: int = WIDTH) -> dict[str, int]:
    """The bound values of `summary_sql` / `bucket_sql`."""
    return {"w": int(width), "p": HASH_P, "q": HASH_Q}


@cache
def _qmark_dialect() -> Any:
    """A SQLAlchemy dialect whose paramstyle is `qmark` (imported on first use: the
    warehouse's load need not pay for SQLAlchemy before it compares summaries)."""
    from sqlalchemy.dialects import sqlite

    return sqlite.dialect(paramstyle="qmark")


def qmark(sql: str, values: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """The SQL with `?` placeholders and its values in order (a warehouse session).

    SQLAlchemy's compiler finds the `:name` placeholders of `text(sql)`, as when the
    extract executes it; values not named in the SQL are ignored."""
    import sqlalchemy as sa

    compiled = sa.text(sql).compile(dialect=_qmark_dialect())
    return compiled.string, [values[name] for name in compiled.positiontup or ()]


Summary = tuple[int, int, int]


def changed_buckets(current: Mapping[int, Summary], previous: Mapping[int, Summary]) -> list[int]:
    """Buckets whose summary differs (a bucket absent on one side counts as empty)."""
    empty = (0, 0, 0)
    return sorted(
        b for b in set(current) | set(previous) if current.get(b, empty) != previous.get(b, empty)
    )


def bucket_bounds(bucket: int, width: int = WIDTH) -> tuple[int, int]:
    """The keys `[lo, hi]` of a bucket, within the bigint range."""
    lo = bucket * width
    return max(lo, INT64_MIN), min(lo + width - 1, INT64_MAX)


def intervals(buckets: Iterable[int], width: int = WIDTH) -> list[tuple[int, int]]:
    """Contiguous buckets merged into key intervals `[lo, hi]`, in order."""
    out: list[tuple[int, int]] = []
    previous = None
    for b in sorted(set(buckets)):
        lo, hi = bucket_bounds(b, width)
        if previous is not None and b == previous + 1:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
        previous = b
    return out
