"""ETL path: the warehouse's current `raw.*` tables -> `analytics.daily_sales`.

One row per (business day, region, category) with at least one counted order, following
the definitions of docs/contract.md, "What it publishes".

Runs on any warehouse backend (`warehouse/backends/`): a function's first warehouse
argument is a `Warehouse`, or a DuckDB file path (that file, read and written in place),
and `build=` names the run's build (None: the published state, or the DuckDB file
itself). Every query goes through `read_arrow` / a `Session` with `{raw}`-style schema
placeholders and `?` parameters, in SQL that DuckDB and PostgreSQL both run.

How the work is split, so that a year of history runs in bounded memory and close to
the speed of plain SQL:
- The warehouse reads the orders of a chunk of business days (`CHUNK_DAYS`, by the UTC
  range of those days, so storage zone maps and indexes skip the rest) and does the
  relational lookups that involve no money arithmetic: the user's current region and the
  category of the order's top item (largest `quantity * unit_price`, an exact DECIMAL
  product, ties to the smallest name in byte order).
- Python does the money: totals as integer cents, the business day of each order
  (zoneinfo day boundaries), the FX rate of that day, `usd_cents_half_up` (vectorised,
  integer-only: transform/money.py), and the pandas group-by into output rows.
Memory is one chunk of orders at a time (at most `CHUNK_DAYS` days and about
`CHUNK_ORDERS` orders); the output (a few rows per day) is all that accumulates.

Incremental runs (`plan_daily_sales`) replace only the days that changed, in one
transaction (`publish_daily_sales(..., plan)`); `ops.daily_sales_days` records which
days were computed, in which time zone, from which FX rates. In a run's build most of
those days are not recomputed: the night's orders (`ops.restated_orders`, with deleted
orders) are read by id in the published state and in the build, and each day's
published rows get the orders' old contribution taken out and their new one put in
(integer cents, so the rows equal a recomputation). A day is recomputed from all its
orders when its FX rates changed, when it was never computed, or when something other
than a recorded order restated it; cost then follows the night's change, not the
history.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from transform.money import cents_to_decimal, reciprocal_fraction, usd_cents_half_up_many
from warehouse.backends import as_warehouse
from warehouse.backends.base import Build, Session, Warehouse

CANCELLED = "cancelled"
UNKNOWN_REGION = "unknown"
UNCATEGORIZED = "uncategorized"
CHUNK_DAYS = 14  # business days per read at most (measured at 5M orders: 7-31 days all close)
CHUNK_ORDERS = 300_000  # orders per read at most: fewer days per read when days are large
ID_BATCH = 2_000  # order ids per `in` list when reading the night's orders by id
ID_ARRAY_BATCH = 100_000  # order ids per bound array (DuckDB, PostgreSQL)
DELTA_MAX_ORDERS = 1_000_000  # a night changing more orders recomputes its days instead


@dataclass(frozen=True)
class ReadChunks:
    """How much `compute_daily_sales` reads at once: at most `days` business days and
    about `orders` orders (fewer days per read when days are large)."""

    days: int = CHUNK_DAYS
    orders: int = CHUNK_ORDERS


# restated_days reasons that the night's orders (ops.restated_orders) explain in full
ORDER_REASONS = frozenset(
    {
        "order_changed",
        "order_new",
        "items_changed",
        "item_deleted",
        "user_region",
        "product_category",
    }
)

OUTPUT_COLUMNS = ["date", "region", "category", "total_sales_usd", "order_count"]

# The current-state raw tables this transform reads (loaded by warehouse/load.py, one row
# per key) and the columns it needs.
TABLES: dict[str, tuple[str, ...]] = {
    "users": ("id", "region"),
    "products": ("id", "category"),
    "orders": ("id", "user_id", "status", "currency", "total", "created_at"),
    "order_items": ("id", "order_id", "product_id", "quantity", "unit_price"),
    "fx_rates": ("rate_date", "currency", "rate"),
}
# NULL or only ASCII whitespace (the same rule as dbt's `is_blank` macro), as a standard
# `SIMILAR TO` pattern (a whole-string match on every backend; as fast as DuckDB's
# regexp_matches, where ltrim/translate are slower). The literal holds the characters
# themselves: space, \t, \n, \v, \f, \r.
_BLANK_PATTERN = "'[ \t\n\x0b\x0c\r]*'"
STATE_TABLE = "ops.daily_sales_days"

# The published column types (contract): the engine's own type for each Arrow type.
DAILY_SALES_SCHEMA = pa.schema(
    [
        pa.field("date", pa.date32()),
        pa.field("region", pa.string()),
        pa.field("category", pa.string()),
        pa.field("total_sales_usd", pa.decimal128(18, 2)),
        pa.field("order_count", pa.int64()),
    ]
)
STATE_SCHEMA = pa.schema(
    [
        pa.field("business_date", pa.date32(), nullable=False),
        pa.field("report_tz", pa.string(), nullable=False),
        pa.field("fx_digest", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("computed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

# A query's rows as Arrow: `Session.read_arrow`, or `_Reader.read_arrow` (one warehouse
# state, read-only where the engine has such a thing).
ReadArrow = Callable[[str, Sequence[Any]], pa.Table]


class MissingFxRateError(LookupError):
    """A counted order's currency has no FX rate for its business day."""

    def __init__(self, currency: str, day: date, order_count: int, others: list[str]) -> None:
        self.currency = currency
        self.day = day
        more = f"; also missing: {', '.join(others)}" if others else ""
        super().__init__(
            f"no FX rate for currency {currency!r} on business day {day.isoformat()} "
            f"(needed by {order_count} counted order(s)){more}"
        )


# ------------------------------------------------------------------ warehouse access


class _Reader:
    """Reads of one warehouse state (`build`, or the published one / the DuckDB file),
    each query on its own read-only connection (DuckDB) or transaction (servers)."""

    def __init__(self, where: Warehouse | Path | str, build: Build | None) -> None:
        self.warehouse = as_warehouse(where)
        self.build = build
        # {schema: {table: {column}}} of the schemas this transform reads, read once
        self.catalog: dict[str, dict[str, set[str]]] | None = None

    def read_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        return self.warehouse.read_arrow(sql, params, build=self.build)

    def schema(self, published: str) -> str:
        """The actual name of a published schema in this state (for information_schema)."""
        return self.build.schema(published) if self.build is not None else published

    def check_exists(self) -> None:
        """A DuckDB file that is not there is not created by a read: say so instead."""
        if self.warehouse.kind != "duckdb":
            return
        path = self.build.path if self.build is not None else getattr(self.warehouse, "path", None)
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"warehouse {path} does not exist: load the sources first")


def _rows(table: pa.Table) -> list[tuple]:
    """An Arrow result as Python tuples (Decimal, date, aware datetime)."""
    return list(zip(*(c.to_pylist() for c in table.columns), strict=True))


_CATALOG_SCHEMAS = ("raw", "ops", "analytics")


def _existing_tables(reader: _Reader, schema: str) -> dict[str, set[str]]:
    """{table: {column, ...}} of a published schema's tables in the reader's state (the
    `raw`, `ops` and `analytics` catalogs in one query, kept for the reader's life)."""
    if reader.catalog is None or schema not in reader.catalog:
        schemas = (
            (*_CATALOG_SCHEMAS, schema) if schema not in _CATALOG_SCHEMAS else _CATALOG_SCHEMAS
        )
        actual = {reader.schema(s): s for s in schemas}
        name = str
        if reader.warehouse.kind == "snowflake":  # the catalog holds upper-case names
            from warehouse.backends.snowflake import physical_name, result_name

            actual, name = {physical_name(a): s for a, s in actual.items()}, result_name
        marks = ", ".join("?" for _ in actual)
        result = reader.read_arrow(
            "select table_schema, table_name, column_name from information_schema.columns "
            f"where table_schema in ({marks})",
            list(actual),
        )
        catalog: dict[str, dict[str, set[str]]] = {s: {} for s in schemas}
        for in_schema, table, column in _rows(result):
            catalog[actual[in_schema]].setdefault(name(table), set()).add(name(column))
        reader.catalog = catalog
    return reader.catalog[schema]


def check_raw_tables(reader: _Reader) -> dict[str, set[str]]:
    """Every needed `raw` table and column exists, or an error names what is missing;
    returns the `raw` tables' columns."""
    existing = _existing_tables(reader, "raw")
    for table, needed in TABLES.items():
        names = existing.get(table)
        if not names:
            raise LookupError(
                f"warehouse table raw.{table} does not exist (needed by the daily_sales "
                "transform; load the source first)"
            )
        missing = [c for c in needed if c not in names]
        if missing:
            raise ValueError(
                f"raw.{table}: missing column(s) {', '.join(missing)} "
                f"(needed by the daily_sales transform: {', '.join(needed)})"
            )
    return existing


def _days_filter(column: str, days: Iterable[date]) -> tuple[str, list[date]]:
    """A predicate selecting exactly `days` (one `between` per run of consecutive days)."""
    runs = day_ranges(sorted(set(days)))
    if not runs:
        return "1 = 0", []
    params = [d for run in runs for d in run]
    return " or ".join(f"({column} between ? and ?)" for _ in runs), params


# ------------------------------------------------------------------ business days


def day_start_utc(day: date, report_tz: str) -> pd.Timestamp:
    """The first instant of business day `day` in `report_tz`, in UTC.

    A local midnight that does not exist (DST starting at 00:00) moves to the first
    valid instant; one that exists twice takes the first.
    """
    return (
        pd.Timestamp(day)
        .tz_localize(report_tz, ambiguous=True, nonexistent="shift_forward")
        .tz_convert("UTC")
    )


def _chunks(days: list[date], size: int) -> Iterator[list[date]]:
    for i in range(0, len(days), size):
        yield days[i : i + size]


def day_ranges(days: list[date]) -> list[tuple[date, date]]:
    """Sorted days -> maximal runs of consecutive days (first, last)."""
    runs: list[tuple[date, date]] = []
    for day in days:
        if runs and runs[-1][1] + timedelta(days=1) == day:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


# ------------------------------------------------------------------ FX rates

_FX_SQL = (
    "select rate_date, currency, rate from {raw}.fx_rates "
    "where rate_date is not null and currency is not null"
)


@dataclass(frozen=True)
class FxRates:
    """Every (rate_date, currency) rate of `raw.fx_rates`, numbered for vector lookups."""

    index: dict[tuple[date, str], int]
    fractions: list[tuple[int, int]]  # 1/rate as (num, den), transform/money.py


def read_fx_rates(read: ReadArrow, *, has_base: bool = True) -> FxRates:
    """`raw.fx_rates` (small: days x currencies); conflicting duplicates are an error.
    `has_base`: the table has a `base` column, which must be 'USD' everywhere."""
    if has_base:
        bad = _rows(read("select distinct base from {raw}.fx_rates where base <> 'USD'", []))
        if bad:
            found = sorted(str(r[0]) for r in bad)
            raise ValueError(f"fx_rates: base must be 'USD', found {', '.join(found)}")
    rows = _rows(read(_FX_SQL + " and rate is not null", []))
    rates: dict[tuple[date, str], Decimal] = {}
    for day, currency, rate in rows:
        key = (day, currency)
        if key in rates and rates[key] != rate:
            raise ValueError(
                f"fx_rates: conflicting rates for {currency} on {day}: {rates[key]} and {rate}"
            )
        rates[key] = rate
    keys = sorted(rates)
    return FxRates(
        index={k: i for i, k in enumerate(keys)},
        fractions=[reciprocal_fraction(rates[k]) for k in keys],
    )


def fx_digests(read: ReadArrow) -> dict[date, str | None]:
    """Per rate date, a digest of its rates: md5 of `CUR=rate,...` (currencies in byte
    order, the rate as the column's decimal text, e.g. `0.921300000000000000`), NULL rates
    left out (None when a day has no rate). Computed here, not in SQL, so that every
    backend gives the same text: it equals what DuckDB gives for
    `md5(string_agg(currency || '=' || cast(rate as varchar), ',' order by currency))`,
    the digests `ops.daily_sales_days` already holds."""
    table = read(_FX_SQL, [])
    rate = table.column("rate")
    text = pc.cast(rate, pa.string()) if rate.type != pa.string() else rate
    parts: dict[date, list[tuple[str, str]]] = {}
    for day, currency, value in zip(
        table.column("rate_date").to_pylist(),
        table.column("currency").to_pylist(),
        text.to_pylist(),
        strict=True,
    ):
        entries = parts.setdefault(day, [])
        if value is not None:
            entries.append((currency, value))
    return {day: _md5_text(sorted(entries)) if entries else None for day, entries in parts.items()}


def _md5_text(entries: list[tuple[str, str]]) -> str:
    text = ",".join(f"{currency}={rate}" for currency, rate in entries)
    return hashlib.md5(text.encode()).hexdigest()


# ------------------------------------------------------------------ one chunk of days


def _bytewise(kind: str, expr: str) -> str:
    """`expr` compared in byte order (the contract's tie-break), as dbt's `bytewise`
    macro: DuckDB's VARCHAR already compares bytes, PostgreSQL needs the C collation."""
    return f'{expr} collate "C"' if kind == "postgres" else expr


# Counted orders of the chunk's UTC ranges with their region and top-item category.
# Only the filter ranges vary (`?` pairs, bound); every value is a parameter.
_CHUNK_SQL = """
with orders_in_scope as (
    select id, user_id, currency, total, created_at
    from {{raw}}.orders
    where ({ranges}) and status is distinct from 'cancelled'
),
item_lines as (
    select
        items.order_id,
        coalesce(items.quantity * items.unit_price, 0) as line_amount,
        case when products.category is null or products.category similar to {blank}
             then 'uncategorized' else products.category end as category
    from {{raw}}.order_items as items
    left join {{raw}}.products as products on products.id = items.product_id
    where items.order_id in (select id from orders_in_scope)
),
top_line as (
    select order_id, max(line_amount) as line_amount
    from item_lines
    group by order_id
),
top_item as (
    -- the largest line's category; among equal lines the smallest name in byte order
    select lines.order_id, min({category_bytes}) as category
    from item_lines as lines
    join top_line on top_line.order_id = lines.order_id
        and top_line.line_amount = lines.line_amount
    group by lines.order_id
)
select
    o.id,
    o.created_at,
    o.currency,
    o.total,
    case when users.region is null or users.region similar to {blank}
         then 'unknown' else users.region end as region,
    coalesce(top_item.category, 'uncategorized') as category
from orders_in_scope as o
left join {{raw}}.users as users on users.id = o.user_id
left join top_item on top_item.order_id = o.id
"""


def _epoch_us(created: pa.ChunkedArray) -> pa.Array:
    """Timestamps (UTC instants; a zone-less column is read as UTC) as int64 microseconds."""
    if not pa.types.is_timestamp(created.type):
        raise ValueError(f"orders.created_at is {created.type}, not a timestamp")
    as_us = created.cast(pa.timestamp("us", tz=created.type.tz))
    return pc.cast(as_us, pa.int64())


def _read_chunk(
    reader: _Reader, days: list[date], report_tz: str
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Rows of the chunk's days, plus each day's [start, end) in UTC microseconds."""
    params: list[Any] = []
    ranges = []
    for first, last in day_ranges(days):
        params.append(day_start_utc(first, report_tz).to_pydatetime())
        params.append(day_start_utc(last + timedelta(days=1), report_tz).to_pydatetime())
        ranges.append("(created_at >= ? and created_at < ?)")
    table = _read_orders(reader, " or ".join(ranges), params)
    starts = np.array([day_start_utc(d, report_tz).value // 1000 for d in days], dtype=np.int64)
    ends = np.array(
        [day_start_utc(d + timedelta(days=1), report_tz).value // 1000 for d in days],
        dtype=np.int64,
    )
    return table, starts, ends


_DUPLICATE_KEYS_SQL = {
    "orders": "select id from {{raw}}.orders where id in ({ids}) "
    "group by id having count(*) > 1 order by id limit 10",
    "users": "select id from {{raw}}.users where id in "
    "(select user_id from {{raw}}.orders where id in ({ids})) "
    "group by id having count(*) > 1 order by id limit 10",
}


def _raise_duplicate_keys(reader: _Reader, ids: np.ndarray) -> None:
    """An order was read twice: raw.orders or raw.users holds a key twice. Say which."""
    values, counts = np.unique(ids, return_counts=True)
    orders = [int(v) for v in values[counts > 1][:10]]
    marks = ", ".join("?" for _ in orders)
    for table, sql in _DUPLICATE_KEYS_SQL.items():
        dupes = [int(r[0]) for r in _rows(reader.read_arrow(sql.format(ids=marks), orders))]
        if dupes:
            raise ValueError(
                f"raw.{table} holds more than one row for id(s) {dupes} (read for order(s) "
                f"{orders}): raw tables hold one row per key (warehouse/load.py merges by key)"
            )
    raise ValueError(f"order(s) {orders} were read more than once from raw.orders")


def _total_cents(total: pa.ChunkedArray) -> np.ndarray:
    """Order totals as exact int64 cents (a value with more than 2 decimals is an error)."""
    cents = (
        pc.multiply(total, pa.scalar(100, pa.int64()))
        if pa.types.is_decimal(total.type)
        else (pc.multiply(total.cast(pa.int64()), 100))
    )
    try:
        return pc.cast(cents, pa.int64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid as exc:
        raise ValueError(
            f"orders.total has a value that is not a whole number of cents: {exc}"
        ) from exc


def _chunk_rows(
    table: pa.Table, days: list[date], starts: np.ndarray, ends: np.ndarray, fx: FxRates
) -> pd.DataFrame:
    """Converted and grouped rows of one chunk (date, region, category, cents, count)."""
    created = table.column("created_us").to_numpy()
    day_index = np.searchsorted(starts, created, side="right") - 1
    if (day_index < 0).any() or (created >= ends[day_index]).any():  # the SQL ranges are exact
        raise RuntimeError("internal: an order outside the chunk's business days was read")
    return _convert_group(table, days, day_index, fx)


def _convert_group(
    table: pa.Table, days: list[date], day_index: np.ndarray, fx: FxRates
) -> pd.DataFrame:
    """Orders with their day (`days[day_index[i]]`) -> USD cents grouped by
    (date, region, category)."""
    for column in ("currency", "total"):
        nulls = pc.is_null(table.column(column))
        if pc.any(nulls).as_py():
            bad = pc.filter(table.column("id"), nulls).to_pylist()[:10]
            raise ValueError(f"orders.{column} is NULL for counted order(s) {bad}")
    currency = pc.dictionary_encode(table.column("currency")).combine_chunks()
    names = currency.dictionary.to_pylist()
    lookup = np.full((len(days), len(names)), -1, dtype=np.int64)
    for k, day in enumerate(days):
        for c, name in enumerate(names):
            lookup[k, c] = fx.index.get((day, name), -1)
    rate_index = lookup[day_index, currency.indices.to_numpy()]
    if (rate_index < 0).any():
        _raise_missing_fx(days, names, day_index, currency.indices.to_numpy(), rate_index)
    cents = usd_cents_half_up_many(_total_cents(table.column("total")), rate_index, fx.fractions)
    return _group(days, day_index, table.column("region"), table.column("category"), cents)


def _group(
    days: list[date],
    day_index: np.ndarray,
    region: pa.ChunkedArray,
    category: pa.ChunkedArray,
    cents: np.ndarray,
) -> pd.DataFrame:
    """Sum cents and count orders per (day, region, category), on one int64 group key.

    Strings are dictionary-encoded once (Arrow), so pandas groups integers, not text.
    """
    regions = pc.dictionary_encode(region).combine_chunks()
    categories = pc.dictionary_encode(category).combine_chunks()
    n_regions, n_categories = len(regions.dictionary), len(categories.dictionary)
    key = (day_index.astype(np.int64) * n_regions + regions.indices.to_numpy()) * n_categories
    key += categories.indices.to_numpy()
    series = pd.Series(cents, copy=False)
    if len(cents) and int(np.abs(cents).max()) * len(cents) > 2**63 - 1:
        series = series.astype(object)  # an int64 sum could wrap: exact Python ints instead
    grouped = series.groupby(key, sort=True).agg(["sum", "size"])
    codes = grouped.index.to_numpy()
    region_names = regions.dictionary.to_pylist()
    category_names = categories.dictionary.to_pylist()
    return pd.DataFrame(
        {
            "date": [days[k] for k in codes // (n_regions * n_categories)],
            "region": [region_names[r] for r in (codes // n_categories) % n_regions],
            "category": [category_names[c] for c in codes % n_categories],
            "usd_cents": grouped["sum"].to_numpy(),
            "order_count": grouped["size"].to_numpy(),
        }
    )


def _raise_missing_fx(
    days: list[date],
    names: list[str],
    day_index: np.ndarray,
    currency_index: np.ndarray,
    rate_index: np.ndarray,
) -> None:
    missing = rate_index < 0
    pairs = pd.DataFrame({"day": day_index[missing], "currency": currency_index[missing]})
    counts = pairs.value_counts(sort=False).sort_index()
    listed = [(days[d], names[c], n) for (d, c), n in counts.items()]
    listed.sort(key=lambda x: (x[0], x[1]))
    day, currency, needed = listed[0]
    others = [f"{c} on {d.isoformat()}" for d, c, _ in listed[1:6]]
    raise MissingFxRateError(currency, day, int(needed), others)


# ------------------------------------------------------------------ the night's orders


def _id_batches(kind: str, ids: Sequence[int]) -> Iterator[tuple[str, list[Any]]]:
    """(predicate on `id`, its parameters) per batch of `ids`: one bound array where the
    engine takes one (DuckDB, PostgreSQL), else `in` lists of `ID_BATCH` values."""
    values = [int(i) for i in ids]
    if kind in ("duckdb", "postgres"):
        for i in range(0, len(values), ID_ARRAY_BATCH):
            yield "id in (select unnest(cast(? as bigint[])))", [values[i : i + ID_ARRAY_BATCH]]
        return
    for i in range(0, len(values), ID_BATCH):
        batch = values[i : i + ID_BATCH]
        yield f"id in ({', '.join('?' for _ in batch)})", batch


def _read_orders(reader: _Reader, where: str, params: list[Any]) -> pa.Table:
    """Counted orders matching `where`, with their business instant in microseconds;
    an order id read twice is an error naming it."""
    sql = _CHUNK_SQL.format(
        ranges=where,
        blank=_BLANK_PATTERN,
        category_bytes=_bytewise(reader.warehouse.kind, "lines.category"),
    )
    table = reader.read_arrow(sql, params)
    table = table.append_column("created_us", _epoch_us(table.column("created_at")))
    ids = table.column("id").to_numpy()
    if len(np.unique(ids)) != len(ids):
        _raise_duplicate_keys(reader, ids)
    return table


def _read_orders_by_id(reader: _Reader, predicate: str, params: list[Any]) -> pa.Table:
    """Counted orders matching `predicate` on their id (with a business instant), as
    `_read_chunk` reads them."""
    return _read_orders(reader, f"{predicate} and created_at is not null", params)


def _day_bounds(days: list[date], report_tz: str) -> tuple[np.ndarray, np.ndarray]:
    """Each day's [start, end) in UTC microseconds."""
    starts = np.array([day_start_utc(d, report_tz).value // 1000 for d in days], dtype=np.int64)
    ends = np.array(
        [day_start_utc(d + timedelta(days=1), report_tz).value // 1000 for d in days],
        dtype=np.int64,
    )
    return starts, ends


def _contributions(
    reader: _Reader,
    ids: Sequence[int],
    days: list[date],
    report_tz: str,
    fx: FxRates,
    elsewhere: Callable[[date], bool],
) -> pd.DataFrame:
    """What the counted orders among `ids` add to the rows of `days` in the reader's
    state (date, region, category, usd_cents, order_count). An order of another day must
    be on a day `elsewhere` accepts (recomputed whole, or past the horizon): else the
    plan missed a day and the rows would be wrong, which is an error."""
    starts, ends = _day_bounds(days, report_tz)
    parts = []
    for predicate, params in _id_batches(reader.warehouse.kind, ids):
        table = _read_orders_by_id(reader, predicate, params)
        if not table.num_rows:
            continue
        created = table.column("created_us").to_numpy()
        day_index = np.searchsorted(starts, created, side="right") - 1
        inside = day_index >= 0
        inside[inside] = created[inside] < ends[day_index[inside]]
        if not inside.all():
            local = pd.to_datetime(created[~inside], unit="us", utc=True).tz_convert(report_tz)
            missed = sorted({d for d in local.date if not elsewhere(d)})
            if missed:
                raise RuntimeError(
                    f"daily_sales: order(s) of the night fall on {missed[0].isoformat()}, a day "
                    "the plan neither adjusts nor recomputes (plan and compute disagree)"
                )
        if inside.any():
            kept = table.filter(pa.array(inside))
            parts.append(_convert_group(kept, days, day_index[inside], fx))
    return pd.concat(parts, ignore_index=True) if parts else _empty_grouped()


def _empty_grouped() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": pd.Series([], dtype=object),
            "region": pd.Series([], dtype=object),
            "category": pd.Series([], dtype=object),
            "usd_cents": pd.Series([], dtype="int64"),
            "order_count": pd.Series([], dtype="int64"),
        }
    )


def _delta_rows(
    reader: _Reader,
    plan: DaysPlan,
    days: list[date],
    report_tz: str,
    elsewhere: Callable[[date], bool],
    fx_new: FxRates,
) -> pd.DataFrame:
    """The rows of `days` (delta days of `plan`) without reading their whole history:
    the published rows, minus what the night's orders contributed in the published
    state (its `raw` is the one those rows were computed from), plus what they
    contribute now. Integer cents throughout, so the result equals a recomputation."""
    published = _Reader(reader.warehouse, None)
    pub_raw = check_raw_tables(published)
    fx_old = read_fx_rates(published.read_arrow, has_base="base" in pub_raw["fx_rates"])
    condition, params = _days_filter("date", days)
    base = published.read_arrow(
        "select date, region, category, total_sales_usd, order_count "
        f"from {{analytics}}.daily_sales where {condition}",
        params,
    )
    frames = [
        pd.DataFrame(
            {
                "date": base.column("date").to_pylist(),
                "region": base.column("region").to_pylist(),
                "category": base.column("category").to_pylist(),
                "usd_cents": _total_cents(base.column("total_sales_usd")),
                "order_count": base.column("order_count").to_numpy(zero_copy_only=False),
            }
        )
    ]
    ids = list(plan.orders)
    frames.append(_contributions(reader, ids, days, report_tz, fx_new, elsewhere))
    old = _contributions(published, ids, days, report_tz, fx_old, elsewhere)
    old["usd_cents"] = -old["usd_cents"]
    old["order_count"] = -old["order_count"]
    frames.append(old)
    merged = pd.concat(frames, ignore_index=True)
    merged["order_count"] = merged["order_count"].astype("int64")
    merged["usd_cents"] = merged["usd_cents"].astype("int64")
    grouped = merged.groupby(["date", "region", "category"], sort=True, as_index=False)[
        ["usd_cents", "order_count"]
    ].sum()
    bad = grouped[
        (grouped["order_count"] < 0) | ((grouped["order_count"] == 0) & (grouped["usd_cents"] != 0))
    ]
    if len(bad):
        first = bad.iloc[0]
        raise RuntimeError(
            f"daily_sales {first['date']} / {first['region']} / {first['category']}: the published "
            f"row does not match the published raw orders (order_count {first['order_count']}, "
            f"cents {first['usd_cents']} after the night's change): run a full rebuild"
        )
    return grouped[grouped["order_count"] > 0].reset_index(drop=True)


def _business_days_of(reader: _Reader, ids: Sequence[int], report_tz: str) -> set[date]:
    """The business days of the orders among `ids` in the reader's state."""
    found: set[date] = set()
    for predicate, params in _id_batches(reader.warehouse.kind, ids):
        table = reader.read_arrow(
            f"select created_at from {{raw}}.orders where {predicate} and created_at is not null",
            params,
        )
        if table.num_rows:
            created = _epoch_us(table.column("created_at")).to_numpy()
            local = pd.to_datetime(created, unit="us", utc=True)
            found.update(local.tz_convert(report_tz).date)
    return found


# ------------------------------------------------------------------ compute


def _empty_result() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": pd.Series([], dtype=object),
            "region": pd.Series([], dtype=str),
            "category": pd.Series([], dtype=str),
            "total_sales_usd": pd.Series([], dtype=object),
            "order_count": pd.Series([], dtype="int64"),
        }
    )


def _local_day(instant: Any, report_tz: str) -> date:
    ts = pd.Timestamp(instant)
    if ts.tzinfo is None:  # a zone-less column holds UTC instants
        ts = ts.tz_localize("UTC")
    return ts.tz_convert(report_tz).date()


def order_days(read: ReadArrow, report_tz: str, through_date: date | None) -> list[date]:
    """Every calendar day from the first order's business day to `through_date` (or the last)."""
    row = _rows(
        read("select min(created_at) as first, max(created_at) as last from {raw}.orders", [])
    )
    first, last = row[0]
    if first is None:
        return []
    first_day = _local_day(first, report_tz)
    last_day = _local_day(last, report_tz)
    if through_date is not None:
        last_day = min(last_day, through_date)
    return [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]


def _check_created_at(read: ReadArrow) -> None:
    null_ids = _rows(
        read(
            "select id from {raw}.orders where created_at is null "
            "and status is distinct from 'cancelled' order by id limit 10",
            [],
        )
    )
    if null_ids:
        raise ValueError(
            f"orders.created_at is NULL for counted order(s) {[r[0] for r in null_ids]}: "
            "no business day"
        )


def compute_daily_sales(
    where: Warehouse | Path | str,
    report_tz: str,
    through_date: date | None,
    *,
    build: Build | None = None,
    plan: DaysPlan | None = None,
    chunks: ReadChunks = ReadChunks(),
) -> pd.DataFrame:
    """Compute `daily_sales` rows from the current state in the warehouse's `raw` schema.

    `where`: a Warehouse, or a DuckDB file path; `build`: the run's build (None: the
    published state, or that file). `plan`: only its days (an incremental run, from
    `plan_daily_sales` on the same build; `DaysPlan.recompute(days, report_tz)` for days
    of the caller's choosing); None: every day with orders. Days after `through_date` are
    never computed. A plan's delta days are the published rows adjusted by the night's
    orders, read by id; every other day is recomputed from all its orders.
    Reads `raw.users`, `raw.products`, `raw.orders`, `raw.order_items` and `raw.fx_rates`
    as Arrow (read-only on DuckDB), at most `chunks.days` business days and about
    `chunks.orders` orders at a time. Returns columns date (datetime.date), region,
    category, total_sales_usd (Decimal, 2 places), order_count (int), sorted by date,
    region, category.
    Raises MissingFxRateError when a counted order has no rate for its day.
    """
    reader = _Reader(where, build)
    reader.check_exists()
    raw = check_raw_tables(reader)
    _check_created_at(reader.read_arrow)
    fx = read_fx_rates(reader.read_arrow, has_base="base" in raw["fx_rates"])
    if plan is None:
        wanted = order_days(reader.read_arrow, report_tz, through_date)
    else:
        wanted = sorted({d for d in plan.days if through_date is None or d <= through_date})
    delta = set(plan.delta_days) if plan is not None and not plan.full else set()
    if delta and build is None:
        raise ValueError("a plan with delta days is computed in the run's build (build=)")
    delta_days = [d for d in wanted if d in delta]
    parts = []
    whole = [d for d in wanted if d not in delta]
    for chunk in _chunks(whole, _days_per_read(reader.read_arrow, whole, report_tz, chunks)):
        table, starts, ends = _read_chunk(reader, chunk, report_tz)
        if table.num_rows:
            parts.append(_chunk_rows(table, chunk, starts, ends, fx))
    if delta_days:
        recomputed = set(wanted) - delta

        def elsewhere(day: date) -> bool:
            return day in recomputed or (through_date is not None and day > through_date)

        parts.append(_delta_rows(reader, plan, delta_days, report_tz, elsewhere, fx))
    parts = [p for p in parts if len(p)]
    if not parts:
        return _empty_result()
    grouped = pd.concat(parts, ignore_index=True)
    result = pd.DataFrame(
        {
            "date": grouped["date"].astype(object),
            "region": grouped["region"].astype(str),
            "category": grouped["category"].astype(str),
            "total_sales_usd": [cents_to_decimal(int(c)) for c in grouped["usd_cents"]],
            "order_count": grouped["order_count"].astype("int64"),
        }
    )
    return result.sort_values(["date", "region", "category"], kind="stable").reset_index(drop=True)


def _days_per_read(read: ReadArrow, days: list[date], report_tz: str, chunks: ReadChunks) -> int:
    """Business days per read of `days` (sorted): `chunks.days`, fewer when their span
    holds more than `chunks.orders / chunks.days` orders a day on average (memory follows
    the orders read). Counted by the span's UTC range, so storage skips the rest."""
    if not days:
        return chunks.days
    start = day_start_utc(days[0], report_tz).to_pydatetime()
    end = day_start_utc(days[-1] + timedelta(days=1), report_tz).to_pydatetime()
    count = _rows(
        read(
            "select count(*) from {raw}.orders where created_at >= ? and created_at < ?",
            [start, end],
        )
    )[0][0]
    per_day = int(count or 0) / ((days[-1] - days[0]).days + 1)
    return max(1, min(chunks.days, int(chunks.orders // max(per_day, 1.0))))


# ------------------------------------------------------------------ incremental plan


@dataclass(frozen=True)
class DaysPlan:
    """Which business days a run computes, and whether it replaces the whole table."""

    days: list[date]
    full: bool
    report_tz: str
    run_id: str | None
    reason: str
    # days of `days` whose rows are the published rows adjusted by the night's orders
    # (`orders`: their ids), instead of recomputed from every order of the day
    delta_days: list[date] = field(default_factory=list)
    orders: tuple[int, ...] = ()

    @classmethod
    def recompute(cls, days: Iterable[date], report_tz: str) -> DaysPlan:
        """A plan of exactly `days`, each recomputed from all its orders (no run, no
        delta days): for a caller that chooses the days itself."""
        return cls(sorted(set(days)), False, report_tz, None, "requested days")

    def summary(self) -> dict[str, Any]:
        return {
            "days": len(self.days),
            "full": self.full,
            "reason": self.reason,
            "delta_days": len(self.delta_days),
            "orders": len(self.orders),
        }


def plan_daily_sales(
    where: Warehouse | Path | str,
    report_tz: str,
    through_date: date,
    run_id: str | None,
    *,
    build: Build | None = None,
    full: bool = False,
) -> DaysPlan:
    """The business days (up to `through_date`) whose `daily_sales` rows must be recomputed.

    `where`/`build` as for `compute_daily_sales`. Everything, when `full`, on the first
    run, or when REPORT_TZ changed; otherwise exactly: the days `ops.restated_days`
    records for `run_id` (late, updated and deleted rows, region and category moves:
    warehouse/load.py), the days after the last computed one, and the days whose FX
    rates differ from those last used (or that have rates but were never computed).
    """
    reader = _Reader(where, build)
    read = reader.read_arrow
    ops = _existing_tables(reader, "ops")
    state = STATE_TABLE.split(".")[1]
    reason = ""
    if full:
        reason = "full rebuild requested"
    elif "daily_sales" not in _existing_tables(reader, "analytics") or state not in ops:
        reason = "first run: no analytics.daily_sales or ops.daily_sales_days yet"
    else:
        zones = {
            r[0] for r in _rows(read("select distinct report_tz from {ops}.daily_sales_days", []))
        }
        if zones - {report_tz}:
            reason = f"REPORT_TZ changed from {', '.join(sorted(zones))} to {report_tz}"
    if reason:
        return DaysPlan(order_days(read, report_tz, through_date), True, report_tz, run_id, reason)
    days: set[date] = set()
    if run_id is not None and "restated_days" in ops:
        days.update(
            r[0]
            for r in _rows(
                read(
                    "select distinct business_date from {ops}.restated_days where run_id = ?",
                    [run_id],
                )
            )
        )
    stored = dict(_rows(read("select business_date, fx_digest from {ops}.daily_sales_days", [])))
    last = max(stored) if stored else through_date
    days.update(last + timedelta(days=i) for i in range(1, (through_date - last).days + 1))
    current = fx_digests(read)
    days.update(d for d, digest in stored.items() if current.get(d) != digest)
    days.update(d for d in current if d not in stored)
    delta_days: list[date] = []
    orders: tuple[int, ...] = ()
    delta = _delta_plan(reader, report_tz, run_id, ops, current)
    if delta is not None:
        eligible, orders, touched = delta
        days.update(touched)
        delta_days = sorted(d for d in days if d <= through_date and eligible(d))
    wanted = sorted(d for d in days if d <= through_date)
    return DaysPlan(wanted, False, report_tz, run_id, "incremental", delta_days, orders)


def _delta_plan(
    reader: _Reader,
    report_tz: str,
    run_id: str | None,
    ops: dict[str, set[str]],
    current: dict[date, str | None],
) -> tuple[Callable[[date], bool], tuple[int, ...], set[date]] | None:
    """Which days can be adjusted by the night's orders instead of recomputed:
    (eligible(day), the orders' ids, their business days in both states), or None.

    Only in a run's build, whose published state is the one its `analytics.daily_sales`
    was computed from (publish refuses a build whose base is no longer published). A
    day qualifies when the published state computed it in this time zone, its FX rates
    are the same in both states, and every reason it was restated is an order the
    loader recorded in `ops.restated_orders`. Deleted users or products change orders
    the loader does not record: then no day qualifies."""
    if reader.build is None or run_id is None or "restated_orders" not in ops:
        return None
    published = _Reader(reader.warehouse, None)
    try:
        published.check_exists()
    except FileNotFoundError:
        return None
    try:
        check_raw_tables(published)
    except (LookupError, ValueError):
        return None
    if "daily_sales_days" not in _existing_tables(published, "ops"):
        return None
    if "daily_sales" not in _existing_tables(published, "analytics"):
        return None
    read = reader.read_arrow
    deleted_orders: list[int] = []
    if "deleted_rows" in ops:
        for table, key in _rows(
            read(
                "select table_name, key from {ops}.deleted_rows where run_id = ? "
                "and table_name in ('orders', 'users', 'products')",
                [run_id],
            )
        ):
            if table != "orders":
                return None
            deleted_orders.append(int(key))
    pub_state = _rows(
        published.read_arrow(
            "select business_date, report_tz, fx_digest from {ops}.daily_sales_days", []
        )
    )
    if any(tz != report_tz for _, tz, _ in pub_state):
        return None
    computed = {d: digest for d, _, digest in pub_state}
    pub_digests = fx_digests(published.read_arrow)
    reasons: dict[date, set[str]] = {}
    if "restated_days" in ops:
        for day, reason in _rows(
            read("select business_date, reason from {ops}.restated_days where run_id = ?", [run_id])
        ):
            reasons.setdefault(day, set()).add(reason)
    restated = read(
        "select order_id, business_date from {ops}.restated_orders where run_id = ?", [run_id]
    )
    # the loader recorded each order's old and new day; a deleted order's day is read
    unique = pc.unique(restated.column("order_id"))
    if len(unique) + len(deleted_orders) > DELTA_MAX_ORDERS:
        return None  # a night this large: its days are read whole, in bounded chunks
    orders = tuple(sorted(set(unique.to_pylist()) | set(deleted_orders)))
    touched = set(restated.column("business_date").to_pylist())
    touched |= _business_days_of(published, deleted_orders, report_tz)

    def eligible(day: date) -> bool:
        return (
            day in computed
            and computed[day] == current.get(day) == pub_digests.get(day)
            and reasons.get(day, set()) <= ORDER_REASONS
        )

    return eligible, orders, touched


# ------------------------------------------------------------------ publish


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """The daily_sales frame as Arrow with the published types (decimal128(18,2), no float)."""
    return pa.table(
        {
            "date": pa.array(list(df["date"]), type=pa.date32()),
            "region": pa.array([str(v) for v in df["region"]], type=pa.string()),
            "category": pa.array([str(v) for v in df["category"]], type=pa.string()),
            "total_sales_usd": pa.array(
                [Decimal(v) for v in df["total_sales_usd"]], type=pa.decimal128(18, 2)
            ),
            "order_count": pa.array([int(v) for v in df["order_count"]], type=pa.int64()),
        },
        schema=DAILY_SALES_SCHEMA,
    )


def _create_table(s: Session, relation: str, schema: pa.Schema, *, if_not_exists: bool) -> None:
    """`create table` with the engine's type for each Arrow field (NOT NULL where the
    field is not nullable)."""
    columns = ", ".join(
        f"{f.name} {s.column_type(f.type)}{'' if f.nullable else ' not null'}" for f in schema
    )
    exists = "if not exists " if if_not_exists else ""
    s.execute(f"create table {exists}{relation} ({columns})")


def _record_days(s: Session, plan: DaysPlan) -> None:
    """`ops.daily_sales_days`: the plan's days, with the FX rates they were computed from."""
    s.execute("create schema if not exists {ops}")
    target = s.table("ops", "daily_sales_days")
    _create_table(s, target, STATE_SCHEMA, if_not_exists=True)
    if plan.full:
        s.execute(f"delete from {target}")
    else:
        condition, params = _days_filter("business_date", plan.days)
        s.execute(f"delete from {target} where {condition}", params)
    digests = fx_digests(s.read_arrow) if s.exists("raw", "fx_rates") else {}
    computed_at = s.fetchone("select now()")[0]  # the transaction's time, as before
    n = len(plan.days)
    s.insert_arrow(
        target,
        pa.table(
            {
                "business_date": pa.array(plan.days, type=pa.date32()),
                "report_tz": pa.array([plan.report_tz] * n, type=pa.string()),
                "fx_digest": pa.array([digests.get(d) for d in plan.days], type=pa.string()),
                "run_id": pa.array([plan.run_id] * n, type=pa.string()),
                "computed_at": pa.array([computed_at] * n, type=pa.timestamp("us", tz="UTC")),
            }
        ),
    )


def publish_daily_sales(
    df: pd.DataFrame,
    where: Warehouse | Path | str,
    plan: DaysPlan | None = None,
    *,
    build: Build | None = None,
) -> int:
    """Write `daily_sales` rows in one transaction; return the rows the table then holds.

    `where`: a Warehouse, or a DuckDB file path (created when missing); `build`: the
    run's build (None: the published schemas, or that file). Without `plan`, or with a
    full plan, the table is replaced (created with the contract's types). With an
    incremental plan, exactly the plan's days are replaced (their old rows deleted, `df`
    inserted) and every other day is left as it is; `df` must hold only rows of those
    days. A plan also records its days in `ops.daily_sales_days` (same transaction).
    """
    table = to_arrow(df).sort_by(
        [("date", "ascending"), ("region", "ascending"), ("category", "ascending")]
    )
    incremental = plan is not None and not plan.full
    if incremental:
        outside = sorted(set(df["date"]) - set(plan.days))
        if outside:
            raise ValueError(f"daily_sales rows for days outside the plan: {outside[:5]}")
    with as_warehouse(where).transaction(build) as s:
        s.execute("create schema if not exists {analytics}")
        target = s.table("analytics", "daily_sales")
        if incremental and s.exists("analytics", "daily_sales"):
            condition, params = _days_filter("date", plan.days)
            s.execute(f"delete from {target} where {condition}", params)
        else:
            s.execute(f"drop table if exists {target}")
            _create_table(s, target, DAILY_SALES_SCHEMA, if_not_exists=False)
        s.insert_arrow(target, table)
        if plan is not None:
            _record_days(s, plan)
        rows = s.fetchone(f"select count(*) from {target}")[0]
    return int(rows)
