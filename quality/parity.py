"""ETL ↔ ELT parity gate (contract §5).

For every (date, region): `analytics.daily_sales` summed over categories must equal
`analytics.sales_summary` in both `order_count` and `total_sales_usd`.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import duckdb

_PARITY_SQL = """
with etl as (
    select date, region, sum(order_count) as order_count, sum(total_sales_usd) as total_sales_usd
    from analytics.daily_sales
    where $through is null or date <= $through
    group by date, region
),
elt as (
    select date, region, order_count, total_sales_usd
    from analytics.sales_summary
    where $through is null or date <= $through
)
select
    coalesce(etl.date, elt.date) as date,
    coalesce(etl.region, elt.region) as region,
    etl.order_count as etl_order_count,
    elt.order_count as elt_order_count,
    etl.total_sales_usd as etl_total_sales_usd,
    elt.total_sales_usd as elt_total_sales_usd
from etl
full outer join elt on etl.date = elt.date and etl.region = elt.region
where etl.order_count is distinct from elt.order_count
   or etl.total_sales_usd is distinct from elt.total_sales_usd
order by 1, 2
"""


class ParityError(RuntimeError):
    """The ETL and ELT outputs disagree; the message lists the numbers side by side."""


def check_sales_parity(
    warehouse_path: Path, *, through_date: date | None = None, max_listed: int = 20
) -> dict[str, Any]:
    """Raise ParityError on any mismatch; return row counts when both paths agree."""
    con = duckdb.connect(str(warehouse_path), read_only=True)
    try:
        mismatches = con.execute(_PARITY_SQL, {"through": through_date}).fetchall()
        counts = con.execute(
            "select (select count(*) from analytics.sales_summary "
            "        where $through is null or date <= $through),"
            "       (select count(*) from analytics.daily_sales "
            "        where $through is null or date <= $through),"
            "       (select count(distinct date) from analytics.sales_summary "
            "        where $through is null or date <= $through)",
            {"through": through_date},
        ).fetchone()
    finally:
        con.close()
    if mismatches:
        lines = [
            f"  {d} {r!r}: order_count etl={eo} elt={lo}; total_sales_usd etl={et} elt={lt}"
            for d, r, eo, lo, et, lt in mismatches[:max_listed]
        ]
        more = len(mismatches) - max_listed
        raise ParityError(
            f"analytics.daily_sales and analytics.sales_summary disagree on "
            f"{len(mismatches)} (date, region) row(s):\n"
            + "\n".join(lines)
            + (f"\n  … and {more} more" if more > 0 else "")
        )
    return {
        "sales_summary_rows": counts[0],
        "daily_sales_rows": counts[1],
        "days_checked": counts[2],
        "mismatches": 0,
    }
