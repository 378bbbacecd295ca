"""ETL path: the warehouse's current `raw.*` tables -> `analytics.daily_sales`.

One row per (business day, region, category) with at least one counted order, following
the definitions of contract §5.

How the work is split, so that a year of history runs in bounded memory and close to
the speed of plain SQL:
- DuckDB reads the orders of a chunk of business days (`CHUNK_DAYS`, by the UTC range
  of those days, so storage zone maps skip the rest) and does the relational lookups
  that involve no money arithmetic: the user's current region and the category of the
  order's top item (largest `quantity * unit_price`, an exact DECIMAL product, ties to
  the smallest name in byte order).
- Python does the money: totals as integer cents, the business day of each order
  (zoneinfo day boundaries), the FX rate of that day, `usd_cents_half_up` (vectorised,
  integer-only: transform/money.py), and the pandas group-by into output rows.
Memory is one chunk of orders at a time; the output (a few rows per day) is all that
accumulates.

Incremental runs (`days_to_recompute`) recompute only the days that changed and replace
them in one transaction (`publish_daily_sales(..., days=...)`); `ops.daily_sales_days`
records which days were computed, in which time zone, from which FX rates.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from transform.money import cents_to_decimal, reciprocal_fraction, usd_cents_half_up_many

CANCELLED = "cancelled"
UNKNOWN_REGION = "unknown"
UNCATEGORIZED = "uncategorized"
CHUNK_DAYS = 14  # business days per read (measured at 5M orders: 7-31 days all close; 92+ slower)

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
# NULL or only ASCII whitespace (the same rule as dbt's `is_blank` macro).
_BLANK_PATTERN = "^[ \t\n\r\f\v]*$"
STATE_TABLE = "ops.daily_sales_days"


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


def check_raw_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Every needed `raw` table and column exists, or an error names what is missing."""
    for table, needed in TABLES.items():
        names = {
            r[0]
            for r in con.execute(
                "select column_name from information_schema.columns "
                "where table_schema = 'raw' and table_name = ?",
                [table],
            ).fetchall()
        }
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


@dataclass(frozen=True)
class FxRates:
    """Every (rate_date, currency) rate of `raw.fx_rates`, numbered for vector lookups."""

    index: dict[tuple[date, str], int]
    fractions: list[tuple[int, int]]  # 1/rate as (num, den), transform/money.py


def read_fx_rates(con: duckdb.DuckDBPyConnection) -> FxRates:
    """`raw.fx_rates` (small: days x currencies); conflicting duplicates are an error."""
    has_base = bool(
        con.execute(
            "select count(*) from information_schema.columns where table_schema = 'raw' "
            "and table_name = 'fx_rates' and column_name = 'base'"
        ).fetchall()[0][0]
    )
    if has_base:
        bad = con.execute(
            "select distinct base from raw.fx_rates where base <> 'USD' order by 1"
        ).fetchall()
        if bad:
            raise ValueError(f"fx_rates: base must be 'USD', found {', '.join(r[0] for r in bad)}")
    rows = con.execute(
        "select rate_date, currency, rate from raw.fx_rates "
        "where rate_date is not null and currency is not null and rate is not null"
    ).fetchall()
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


# ------------------------------------------------------------------ one chunk of days

# Counted orders of the chunk's UTC ranges with their region and top-item category.
# Only the filter ranges vary ($lo<i>/$hi<i>, bound); every value is a parameter.
_CHUNK_SQL = """
with orders_in_scope as (
    select id, user_id, currency, total, created_at
    from raw.orders
    where ({ranges}) and status is distinct from 'cancelled'
),
item_lines as (
    select
        items.order_id,
        coalesce(items.quantity * items.unit_price, 0) as line_amount,
        case when products.category is null or regexp_matches(products.category, $blank)
             then 'uncategorized' else products.category end as category
    from raw.order_items as items
    left join raw.products as products on products.id = items.product_id
    where items.order_id in (select id from orders_in_scope)
),
top_item as (
    -- largest line first, then the smallest name (VARCHAR compares bytewise)
    select order_id, arg_min(category, {{'line': -line_amount, 'name': category}}) as category
    from item_lines
    group by order_id
)
select
    o.id,
    epoch_us(o.created_at) as created_us,
    o.currency,
    o.total,
    case when users.region is null or regexp_matches(users.region, $blank)
         then 'unknown' else users.region end as region,
    coalesce(top_item.category, 'uncategorized') as category
from orders_in_scope as o
left join raw.users as users on users.id = o.user_id
left join top_item on top_item.order_id = o.id
"""


def _read_chunk(
    con: duckdb.DuckDBPyConnection, days: list[date], report_tz: str
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Rows of the chunk's days, plus each day's [start, end) in UTC microseconds."""
    params: dict[str, Any] = {"blank": _BLANK_PATTERN}
    ranges = []
    for i, (first, last) in enumerate(day_ranges(days)):
        params[f"lo{i}"] = day_start_utc(first, report_tz).to_pydatetime()
        params[f"hi{i}"] = day_start_utc(last + timedelta(days=1), report_tz).to_pydatetime()
        ranges.append(f"(created_at >= $lo{i} and created_at < $hi{i})")
    table = con.sql(_CHUNK_SQL.format(ranges=" or ".join(ranges)), params=params).to_arrow_table()
    ids = table.column("id").to_numpy()
    if len(np.unique(ids)) != len(ids):
        _raise_duplicate_keys(con, ids)
    starts = np.array([day_start_utc(d, report_tz).value // 1000 for d in days], dtype=np.int64)
    ends = np.array(
        [day_start_utc(d + timedelta(days=1), report_tz).value // 1000 for d in days],
        dtype=np.int64,
    )
    return table, starts, ends


_DUPLICATE_KEYS_SQL = {
    "orders": "select id from raw.orders where id in (select unnest($ids)) "
    "group by id having count(*) > 1 order by id limit 10",
    "users": "select id from raw.users where id in "
    "(select user_id from raw.orders where id in (select unnest($ids))) "
    "group by id having count(*) > 1 order by id limit 10",
}


def _raise_duplicate_keys(con: duckdb.DuckDBPyConnection, ids: np.ndarray) -> None:
    """An order was read twice: raw.orders or raw.users holds a key twice. Say which."""
    values, counts = np.unique(ids, return_counts=True)
    orders = [int(v) for v in values[counts > 1][:10]]
    for table, sql in _DUPLICATE_KEYS_SQL.items():
        dupes = [r[0] for r in con.execute(sql, {"ids": orders}).fetchall()]
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
    for column in ("currency", "total"):
        nulls = pc.is_null(table.column(column))
        if pc.any(nulls).as_py():
            bad = pc.filter(table.column("id"), nulls).to_pylist()[:10]
            raise ValueError(f"orders.{column} is NULL for counted order(s) {bad}")
    created = table.column("created_us").to_numpy()
    day_index = np.searchsorted(starts, created, side="right") - 1
    if (day_index < 0).any() or (created >= ends[day_index]).any():  # the SQL ranges are exact
        raise RuntimeError("internal: an order outside the chunk's business days was read")
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


def order_days(
    con: duckdb.DuckDBPyConnection, report_tz: str, through_date: date | None
) -> list[date]:
    """Every calendar day from the first order's business day to `through_date` (or the last)."""
    first, last = con.execute("select min(created_at), max(created_at) from raw.orders").fetchall()[
        0
    ]
    if first is None:
        return []
    first_day = pd.Timestamp(first).tz_convert(report_tz).date()
    last_day = pd.Timestamp(last).tz_convert(report_tz).date()
    if through_date is not None:
        last_day = min(last_day, through_date)
    return [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]


def _check_created_at(con: duckdb.DuckDBPyConnection) -> None:
    null_ids = con.execute(
        "select id from raw.orders where created_at is null "
        "and status is distinct from 'cancelled' order by id limit 10"
    ).fetchall()
    if null_ids:
        raise ValueError(
            f"orders.created_at is NULL for counted order(s) {[r[0] for r in null_ids]}: "
            "no business day"
        )


def compute_daily_sales(
    warehouse_path: Path,
    report_tz: str,
    through_date: date | None,
    days: Iterable[date] | None = None,
    *,
    chunk_days: int = CHUNK_DAYS,
) -> pd.DataFrame:
    """Compute `daily_sales` rows from the current state in the warehouse's `raw` schema.

    `days`: only these business days (an incremental run); None: every day with orders.
    Days after `through_date` are never computed. Reads `raw.users`, `raw.products`,
    `raw.orders`, `raw.order_items` and `raw.fx_rates` through a read-only DuckDB
    connection, `chunk_days` business days at a time. Returns columns date
    (datetime.date), region, category, total_sales_usd (Decimal, 2 places), order_count
    (int), sorted by date, region, category.
    Raises MissingFxRateError when a counted order has no rate for its day.
    """
    path = Path(warehouse_path)
    if not path.exists():
        raise FileNotFoundError(f"warehouse {path} does not exist: load the sources first")
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute("set TimeZone = 'UTC'")
        check_raw_tables(con)
        _check_created_at(con)
        fx = read_fx_rates(con)
        if days is None:
            wanted = order_days(con, report_tz, through_date)
        else:
            wanted = sorted({d for d in days if through_date is None or d <= through_date})
        parts = []
        for chunk in _chunks(wanted, chunk_days):
            table, starts, ends = _read_chunk(con, chunk, report_tz)
            if table.num_rows:
                parts.append(_chunk_rows(table, chunk, starts, ends, fx))
    finally:
        con.close()
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


# ------------------------------------------------------------------ incremental plan

_FX_DIGEST_SQL = """
select rate_date, md5(string_agg(currency || '=' || cast(rate as varchar), ',' order by currency))
from raw.fx_rates
where rate_date is not null and currency is not null
group by rate_date
"""

_STATE_DDL = f"""
create table if not exists {STATE_TABLE} (
    business_date date not null,
    report_tz varchar not null,
    fx_digest varchar,
    run_id varchar,
    computed_at timestamptz not null
)
"""


@dataclass(frozen=True)
class DaysPlan:
    """Which business days a run computes, and whether it replaces the whole table."""

    days: list[date]
    full: bool
    report_tz: str
    run_id: str | None
    reason: str

    def summary(self) -> dict[str, Any]:
        return {"days": len(self.days), "full": self.full, "reason": self.reason}


def _relation_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        con.execute(
            "select count(*) from information_schema.tables "
            "where table_schema = ? and table_name = ?",
            [schema, table],
        ).fetchall()[0][0]
    )


def plan_daily_sales(
    warehouse_path: Path,
    report_tz: str,
    through_date: date,
    run_id: str | None,
    *,
    full: bool = False,
) -> DaysPlan:
    """The business days (up to `through_date`) whose `daily_sales` rows must be recomputed.

    Everything, when `full`, on the first run, or when REPORT_TZ changed; otherwise
    exactly: the days `ops.restated_days` records for `run_id` (late, updated and deleted
    rows, region and category moves: warehouse/load.py), the days after the last
    computed one, and the days whose FX rates differ from those last used (or that have
    rates but were never computed).
    """
    con = duckdb.connect(str(warehouse_path), read_only=True)
    try:
        con.execute("set TimeZone = 'UTC'")
        schema, name = STATE_TABLE.split(".")
        reason = ""
        if full:
            reason = "full rebuild requested"
        elif not _relation_exists(con, "analytics", "daily_sales") or not _relation_exists(
            con, schema, name
        ):
            reason = "first run: no analytics.daily_sales or ops.daily_sales_days yet"
        else:
            zones = {
                r[0]
                for r in con.execute(f"select distinct report_tz from {STATE_TABLE}").fetchall()
            }
            if zones - {report_tz}:
                reason = f"REPORT_TZ changed from {', '.join(sorted(zones))} to {report_tz}"
        if reason:
            return DaysPlan(
                order_days(con, report_tz, through_date), True, report_tz, run_id, reason
            )
        days: set[date] = set()
        if run_id is not None and _relation_exists(con, "ops", "restated_days"):
            days.update(
                r[0]
                for r in con.execute(
                    "select distinct business_date from ops.restated_days where run_id = ?",
                    [run_id],
                ).fetchall()
            )
        stored = dict(con.execute(f"select business_date, fx_digest from {STATE_TABLE}").fetchall())
        last = max(stored) if stored else through_date
        days.update(last + timedelta(days=i) for i in range(1, (through_date - last).days + 1))
        current = dict(con.execute(_FX_DIGEST_SQL).fetchall())
        days.update(d for d, digest in stored.items() if current.get(d) != digest)
        days.update(d for d in current if d not in stored)
    finally:
        con.close()
    wanted = sorted(d for d in days if d <= through_date)
    return DaysPlan(wanted, False, report_tz, run_id, "incremental")


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
        }
    )


_SELECT_TYPED = """
select
    cast(date as date) as date,
    cast(region as varchar) as region,
    cast(category as varchar) as category,
    cast(total_sales_usd as decimal(18, 2)) as total_sales_usd,
    cast(order_count as bigint) as order_count
from daily_sales_arrow
order by date, region, category
"""


def _record_days(con: duckdb.DuckDBPyConnection, plan: DaysPlan) -> None:
    """`ops.daily_sales_days`: the plan's days, with the FX rates they were computed from."""
    con.execute("create schema if not exists ops")
    con.execute(_STATE_DDL)
    if plan.full:
        con.execute(f"delete from {STATE_TABLE}")
    digests = dict(con.execute(_FX_DIGEST_SQL).fetchall())
    state = pa.table(
        {
            "business_date": pa.array(plan.days, type=pa.date32()),
            "fx_digest": pa.array([digests.get(d) for d in plan.days], type=pa.string()),
        }
    )
    con.register("daily_sales_state_arrow", state)
    try:
        con.execute(
            f"delete from {STATE_TABLE} where business_date in "
            "(select business_date from daily_sales_state_arrow)"
        )
        con.execute(
            f"insert into {STATE_TABLE} select business_date, ?, fx_digest, ?, now() "
            "from daily_sales_state_arrow",
            [plan.report_tz, plan.run_id],
        )
    finally:
        con.unregister("daily_sales_state_arrow")


def publish_daily_sales(
    df: pd.DataFrame, warehouse_path: Path, plan: DaysPlan | None = None
) -> int:
    """Write `daily_sales` rows in one transaction; return the rows the table then holds.

    Without `plan`, or with a full plan, the table is replaced. With an incremental plan,
    exactly the plan's days are replaced (their old rows deleted, `df` inserted) and every
    other day is left as it is; `df` must hold only rows of those days. A plan also
    records its days in `ops.daily_sales_days` (same transaction).
    """
    table = to_arrow(df)
    incremental = plan is not None and not plan.full
    if incremental:
        outside = sorted(set(df["date"]) - set(plan.days))
        if outside:
            raise ValueError(f"daily_sales rows for days outside the plan: {outside[:5]}")
    warehouse_path = Path(warehouse_path)
    warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(warehouse_path))
    try:
        con.register("daily_sales_arrow", table)
        con.execute("begin transaction")
        try:
            con.execute("create schema if not exists analytics")
            if incremental and _relation_exists(con, "analytics", "daily_sales"):
                con.execute(
                    "delete from analytics.daily_sales where date in "
                    "(select unnest(cast(? as date[])))",
                    [plan.days],
                )
                con.execute(f"insert into analytics.daily_sales {_SELECT_TYPED}")
            else:
                con.execute(f"create or replace table analytics.daily_sales as {_SELECT_TYPED}")
            if plan is not None:
                _record_days(con, plan)
            rows = con.execute("select count(*) from analytics.daily_sales").fetchall()[0][0]
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        finally:
            con.unregister("daily_sales_arrow")
    finally:
        con.close()
    return int(rows)
