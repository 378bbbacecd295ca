"""ETL path: the warehouse's current `raw.*` tables -> `analytics.daily_sales`.

One row per (business day, region, category) with at least one counted order, following
the definitions of contract §5. Relational work is done in pandas; money stays exact
(Decimal in, integer cents in between, Decimal / DECIMAL(18,2) out), never float.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pandas as pd
import pyarrow as pa

from transform.money import cents_to_decimal, scaled_int, usd_cents_half_up

CANCELLED = "cancelled"
UNKNOWN_REGION = "unknown"
UNCATEGORIZED = "uncategorized"

OUTPUT_COLUMNS = ["date", "region", "category", "total_sales_usd", "order_count"]

# The current-state raw tables this transform reads (loaded by warehouse/load.py) and the
# columns it needs, with the Arrow types they are expected to have.
TABLES: dict[str, dict[str, pa.DataType]] = {
    "users": {"id": pa.int64(), "region": pa.string()},
    "products": {"id": pa.int64(), "category": pa.string()},
    "orders": {
        "id": pa.int64(),
        "user_id": pa.int64(),
        "status": pa.string(),
        "currency": pa.string(),
        "total": pa.decimal128(12, 2),
        "created_at": pa.timestamp("us", tz="UTC"),
    },
    "order_items": {
        "id": pa.int64(),
        "order_id": pa.int64(),
        "product_id": pa.int64(),
        "quantity": pa.int64(),
        "unit_price": pa.decimal128(12, 2),
    },
    "fx_rates": {
        "rate_date": pa.date32(),
        "currency": pa.string(),
        "rate": pa.decimal128(38, 18),
    },
}
# Read when present: a table that carries several versions of a row keeps the latest.
_OPTIONAL_COLUMNS = ("updated_at", "base")


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


def read_raw(con: duckdb.DuckDBPyConnection, table: str) -> pa.Table:
    """The needed columns of `raw.<table>` as Arrow (extra columns are not read)."""
    needed = TABLES[table]
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
            f"warehouse table raw.{table} does not exist (needed by the daily_sales transform; "
            "load the source first)"
        )
    missing = [c for c in needed if c not in names]
    if missing:
        raise ValueError(
            f"raw.{table}: missing column(s) {', '.join(missing)} "
            f"(needed by the daily_sales transform: {', '.join(needed)})"
        )
    columns = list(needed) + [c for c in _OPTIONAL_COLUMNS if c in names]
    # `table` and the column names come from the whitelist above
    select = ", ".join(f'"{c}"' for c in columns)
    return con.sql(f'select {select} from raw."{table}"').to_arrow_table()


def _latest_per_key(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Keep one row per key: the latest `updated_at` when the column exists, else the last."""
    if "updated_at" in df.columns:
        df = df.sort_values("updated_at", kind="stable", na_position="first")
    return df.drop_duplicates(subset=keys, keep="last")


_BLANK = " \t\n\r\f\v"


def _is_blank(series: pd.Series) -> pd.Series:
    """NULL or only ASCII whitespace (the same rule as dbt's `is_blank` macro)."""
    return series.map(lambda v: v is None or v is pd.NA or v != v or str(v).strip(_BLANK) == "")


def _int_series(values: list[int], index: pd.Index) -> pd.Series:
    """Python ints as int64 when they fit, else as exact Python ints (object)."""
    try:
        return pd.Series(values, index=index, dtype="int64")
    except OverflowError:
        return pd.Series(values, index=index, dtype=object)


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


def _business_days(created_at: pd.Series, tz: ZoneInfo) -> pd.Series:
    """UTC timestamps -> calendar date in `tz` (zoneinfo, DST-correct)."""
    if created_at.isna().any():
        raise ValueError("orders.created_at is NULL for some orders: no business day")
    if created_at.dt.tz is None:  # landed as naive: the source's timestamps are UTC
        created_at = created_at.dt.tz_localize("UTC")
    return created_at.dt.tz_convert(tz).dt.date


def _order_categories(items: pd.DataFrame, products: pd.DataFrame) -> pd.DataFrame:
    """order_id -> category of its item with the largest quantity*unit_price.

    Ties go to the smallest category name (Python str order == UTF-8 byte order).
    """
    if items.empty:
        return pd.DataFrame({"order_id": pd.Series([], dtype="int64"), "category": []})
    categories = products.loc[~_is_blank(products["category"]), ["id", "category"]]
    items = items.merge(
        categories.rename(columns={"id": "product_id"}), on="product_id", how="left"
    )
    items["category"] = items["category"].where(items["category"].notna(), UNCATEGORIZED)
    items["category"] = items["category"].astype(object)
    # Exact line value in cents; a NULL quantity or price counts as 0.
    line_cents = [
        0 if q is None or p is None else int(q) * scaled_int(p, 2, "order_items.unit_price")
        for q, p in zip(
            items["quantity"].astype(object).where(items["quantity"].notna(), None),
            items["unit_price"].astype(object).where(items["unit_price"].notna(), None),
            strict=True,
        )
    ]
    items["line_cents"] = _int_series(line_cents, items.index)
    # Plain Python comparison of (-value, category): exact for ints and byte-ordered for
    # names, whatever dtype pandas picked for the columns.
    best: dict[int, tuple[int, str]] = {}
    for order_id, value, category in zip(
        items["order_id"].tolist(), items["line_cents"].tolist(), items["category"], strict=True
    ):
        current = best.get(order_id)
        if current is None or (-value, category) < (-current[0], current[1]):
            best[order_id] = (value, category)
    return pd.DataFrame(
        {
            "order_id": pd.Series(list(best), dtype="int64"),
            "category": [c for _, c in best.values()],
        }
    )


def _fx_rates(fx: pd.DataFrame) -> dict[tuple[date, str], Decimal]:
    """(rate_date, currency) -> rate; conflicting duplicates are an error, not a guess."""
    if "base" in fx.columns:
        bad = sorted({str(b) for b in fx["base"].dropna().unique()} - {"USD"})
        if bad:
            raise ValueError(f"fx_rates: base must be 'USD', found {', '.join(bad)}")
    rates: dict[tuple[date, str], Decimal] = {}
    for day, currency, rate in zip(fx["rate_date"], fx["currency"], fx["rate"], strict=True):
        if pd.isna(rate) or pd.isna(currency) or pd.isna(day):
            continue
        key = (day, currency)
        if key in rates and rates[key] != rate:
            raise ValueError(
                f"fx_rates: conflicting rates for {currency} on {day}: {rates[key]} and {rate}"
            )
        rates[key] = rate
    return rates


def compute_daily_sales(
    warehouse_path: Path,
    report_tz: str,
    through_date: date | None,
) -> pd.DataFrame:
    """Compute `daily_sales` rows from the current state in the warehouse's `raw` schema.

    Reads `raw.users`, `raw.products`, `raw.orders`, `raw.order_items` and
    `raw.fx_rates` through a read-only DuckDB connection. Returns columns
    date (datetime.date), region, category, total_sales_usd (Decimal, 2 places),
    order_count (int), sorted by date, region, category.
    Raises MissingFxRateError when a counted order has no rate for its day.
    """
    tz = ZoneInfo(report_tz)
    path = Path(warehouse_path)
    if not path.exists():
        raise FileNotFoundError(f"warehouse {path} does not exist: load the sources first")
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute("set TimeZone = 'UTC'")
        arrow = {table: read_raw(con, table) for table in TABLES}
    finally:
        con.close()
    # Nullable Int64 keeps ids and quantities exact when a column has NULLs (no float64).
    int_types = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype()}
    frames = {key: t.to_pandas(types_mapper=int_types.get) for key, t in arrow.items()}
    users = _latest_per_key(frames["users"], ["id"])
    products = _latest_per_key(frames["products"], ["id"])
    orders = _latest_per_key(frames["orders"], ["id"])
    items = _latest_per_key(frames["order_items"], ["id"])
    fx = frames["fx_rates"]

    # Counted orders of the days in scope.
    orders = orders.loc[orders["status"].astype(object) != CANCELLED].copy()
    orders["date"] = _business_days(orders["created_at"], tz)
    if through_date is not None:
        orders = orders.loc[orders["date"] <= through_date]
    if orders.empty:
        return _empty_result()
    for column in ("currency", "total"):
        null_ids = orders.loc[orders[column].isna(), "id"].tolist()
        if null_ids:
            raise ValueError(f"orders.{column} is NULL for counted order(s) {null_ids[:10]}")

    # Region: the user's region now; NULL/blank or missing user -> unknown.
    regions = users.loc[~_is_blank(users["region"]), ["id", "region"]]
    orders = orders.merge(
        regions.rename(columns={"id": "user_id", "region": "region"}),
        on="user_id",
        how="left",
    )
    orders["region"] = orders["region"].where(orders["region"].notna(), UNKNOWN_REGION)

    # Category: of the order's top item; no items -> uncategorized.
    order_items = items.loc[items["order_id"].isin(orders["id"])]
    categories = _order_categories(order_items, products)
    orders = orders.merge(
        categories.rename(columns={"order_id": "id"}), on="id", how="left", validate="1:1"
    )
    orders["category"] = orders["category"].where(orders["category"].notna(), UNCATEGORIZED)

    # USD cents per order at the rate of its business day, never another day's.
    rates = _fx_rates(fx)
    keys = list(zip(orders["date"], orders["currency"].astype(object), strict=True))
    missing = sorted({k for k in keys if k not in rates}, key=lambda k: (k[0], str(k[1])))
    if missing:
        day, currency = missing[0]
        needed = sum(1 for k in keys if k == (day, currency))
        others = [f"{c} on {d.isoformat()}" for d, c in missing[1:6]]
        raise MissingFxRateError(str(currency), day, needed, others)
    usd_cents = [
        usd_cents_half_up(total, rates[key])
        for total, key in zip(orders["total"].astype(object), keys, strict=True)
    ]
    orders["usd_cents"] = _int_series(usd_cents, orders.index)

    grouped = (
        orders.groupby(["date", "region", "category"], sort=True)
        .agg(usd_cents=("usd_cents", "sum"), order_count=("id", "size"))
        .reset_index()
    )
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


_PUBLISH_SQL = """
create or replace table analytics.daily_sales as
select
    cast(date as date) as date,
    cast(region as varchar) as region,
    cast(category as varchar) as category,
    cast(total_sales_usd as decimal(18, 2)) as total_sales_usd,
    cast(order_count as bigint) as order_count
from daily_sales_arrow
order by date, region, category
"""


def publish_daily_sales(df: pd.DataFrame, warehouse_path: Path) -> int:
    """Replace `analytics.daily_sales` in the DuckDB file in one transaction; return rows."""
    table = to_arrow(df)
    warehouse_path = Path(warehouse_path)
    warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(warehouse_path))
    try:
        con.register("daily_sales_arrow", table)
        con.execute("begin transaction")
        try:
            con.execute("create schema if not exists analytics")
            con.execute(_PUBLISH_SQL)
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        finally:
            con.unregister("daily_sales_arrow")
    finally:
        con.close()
    return table.num_rows
