"""ETL ↔ ELT parity gate (docs/contract.md, "What it publishes").

For every (date, region): `analytics.daily_sales` summed over categories must equal
`analytics.sales_summary` in both `order_count` and `total_sales_usd`. Runs on any
warehouse backend (`warehouse/backends/`): the SQL is read as Arrow through
`read_arrow`, with `{analytics}` for the (build's) schema and `?` parameters.
When they disagree, the error also names the (date, region, category) rows of
`daily_sales` that differ from dbt's orders (`marts.fct_orders`) with both values, so
the person on call sees which side and which category is off.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa

from warehouse.backends import as_warehouse
from warehouse.backends.base import Build, Warehouse

# `{through}`: '' or a `where date <= ?` filter (one `?` each, bound to through_date).
_PARITY_SQL = """
with etl as (
    select date, region, sum(order_count) as order_count, sum(total_sales_usd) as total_sales_usd
    from {{analytics}}.daily_sales
    {through}
    group by date, region
),
elt as (
    select date, region, order_count, total_sales_usd
    from {{analytics}}.sales_summary
    {through}
)
select
    coalesce(etl.date, elt.date) as date,
    coalesce(etl.region, elt.region) as region,
    cast(etl.order_count as bigint) as etl_order_count,
    cast(elt.order_count as bigint) as elt_order_count,
    cast(etl.total_sales_usd as decimal(38, 2)) as etl_total_sales_usd,
    cast(elt.total_sales_usd as decimal(38, 2)) as elt_total_sales_usd
from etl
full outer join elt on etl.date = elt.date and etl.region = elt.region
where etl.order_count is distinct from elt.order_count
   or etl.total_sales_usd is distinct from elt.total_sales_usd
"""

_COUNTS_SQL = """
select
    (select count(*) from {{analytics}}.sales_summary {through}) as sales_summary_rows,
    (select count(*) from {{analytics}}.daily_sales {through}) as daily_sales_rows,
    (select count(distinct date) from {{analytics}}.sales_summary {through}) as days_checked
"""


# The ELT side per category: dbt's counted orders, cents summed exactly as sales_summary.
# `{through}`: '' or `and business_date <= ?`; `{days}`: the mismatched days, `?` each.
_CATEGORY_SQL = """
with etl as (
    select date, region, category, order_count, total_sales_usd
    from {{analytics}}.daily_sales
    where date in ({days})
),
elt as (
    select
        business_date as date,
        region,
        category,
        count(*) as order_count,
        cast(cast(sum(usd_cents) as decimal(38, 0)) * 0.01 as decimal(38, 2)) as total_sales_usd
    from {{marts}}.fct_orders
    where is_counted and business_date in ({days})
    group by business_date, region, category
)
select
    coalesce(etl.date, elt.date) as date,
    coalesce(etl.region, elt.region) as region,
    coalesce(etl.category, elt.category) as category,
    cast(etl.order_count as bigint) as etl_order_count,
    cast(elt.order_count as bigint) as elt_order_count,
    cast(etl.total_sales_usd as decimal(38, 2)) as etl_total_sales_usd,
    cast(elt.total_sales_usd as decimal(38, 2)) as elt_total_sales_usd
from etl
full outer join elt
    on etl.date = elt.date and etl.region = elt.region and etl.category = elt.category
where etl.order_count is distinct from elt.order_count
   or etl.total_sales_usd is distinct from elt.total_sales_usd
"""


class ParityError(RuntimeError):
    """The ETL and ELT outputs disagree; the message lists the numbers side by side."""


def _rows(table: pa.Table) -> list[tuple]:
    return list(zip(*(c.to_pylist() for c in table.columns), strict=True))


def _by_category(
    warehouse: Warehouse, build: Build | None, mismatches: list[tuple], max_listed: int
) -> list[str]:
    """The lines naming the (date, region, category) rows of daily_sales that differ from
    dbt's orders, within the mismatched (date, region)s; none when the marts are absent."""
    pairs = {(d, r) for d, r, *_ in mismatches}
    days = sorted({d for d, _ in pairs if d is not None})
    if not days:
        return []
    sql = _CATEGORY_SQL.format(days=", ".join("?" * len(days)))
    try:
        rows = _rows(warehouse.read_arrow(sql, days * 2, build=build))
    except Exception:  # no marts.fct_orders (a warehouse built without dbt): totals only
        return []
    rows = sorted(
        (r for r in rows if (r[0], r[1]) in pairs),
        key=lambda r: (r[0], r[1] or "", r[2] or ""),
    )
    return [
        f"    {d} {r!r} {c!r}: order_count daily_sales={eo} dbt={lo}; "
        f"total_sales_usd daily_sales={et} dbt={lt}"
        for d, r, c, eo, lo, et, lt in rows[:max_listed]
    ]


def check_sales_parity(
    where: Warehouse | Path | str,
    *,
    build: Build | None = None,
    through_date: date | None = None,
    max_listed: int = 20,
) -> dict[str, Any]:
    """Raise ParityError on any mismatch; return row counts when both paths agree.

    `where`: a Warehouse, or a DuckDB file path; `build`: the run's build (None: the
    published state, or that file)."""
    warehouse = as_warehouse(where)
    through, one = ("where date <= ?", [through_date]) if through_date is not None else ("", [])
    mismatches = _rows(
        warehouse.read_arrow(_PARITY_SQL.format(through=through), one * 2, build=build)
    )
    # (date, region) in byte order, whatever the engine's collation
    mismatches.sort(key=lambda r: (r[0] is None, r[0] or date.min, r[1] is None, r[1] or ""))
    counts_sql = _COUNTS_SQL.format(through=through)
    counts = _rows(warehouse.read_arrow(counts_sql, one * 3, build=build))[0]
    if mismatches:
        lines = [
            f"  {d} {r!r}: order_count etl={eo} elt={lo}; total_sales_usd etl={et} elt={lt}"
            for d, r, eo, lo, et, lt in mismatches[:max_listed]
        ]
        more = len(mismatches) - max_listed
        categories = _by_category(warehouse, build, mismatches[:max_listed], max_listed)
        raise ParityError(
            f"analytics.daily_sales and analytics.sales_summary disagree on "
            f"{len(mismatches)} (date, region) row(s):\n"
            + "\n".join(lines)
            + (f"\n  … and {more} more" if more > 0 else "")
            + (
                "\n  daily_sales (ETL) against dbt's counted orders (marts.fct_orders), "
                "by category:\n" + "\n".join(categories)
                if categories
                else ""
            )
            + "\nNothing was published. Fix the path that is wrong (transform/daily_sales.py "
            "or the dbt models), then rerun the day."
        )
    return {
        "sales_summary_rows": int(counts[0]),
        "daily_sales_rows": int(counts[1]),
        "days_checked": int(counts[2]),
        "mismatches": 0,
    }
