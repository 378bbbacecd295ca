"""An independent computation of the published tables, in SQL on the source database.

Written straight from the definitions of docs/contract.md in PostgreSQL, sharing no code with the pipeline:
the pipeline's outputs are compared against it row for row.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import httpx
import sqlalchemy as sa

_ORDERS_SQL = r"""
with fx as (
    select day, currency, rate from oracle_fx
),
counted as (
    select o.id, o.user_id, o.currency, o.total,
           (o.created_at at time zone :tz)::date as day
    from orders o
    where o.status <> 'cancelled'
),
items as (
    select i.order_id,
           case when p.category is null or p.category ~ '^\s*$' then 'uncategorized'
                else p.category end as category,
           i.quantity * i.unit_price as amount
    from order_items i
    left join products p on p.id = i.product_id
),
ranked as (
    select order_id, category,
           row_number() over (
               partition by order_id order by amount desc, category collate "C" asc
           ) as rn
    from items
)
select c.day,
       case when u.region is null or u.region ~ '^\s*$' then 'unknown'
            else u.region end as region,
       coalesce(r.category, 'uncategorized') as category,
       round(c.total / fx.rate, 2) as usd
from counted c
left join users u on u.id = c.user_id
left join ranked r on r.order_id = c.id and r.rn = 1
left join fx on fx.day = c.day and fx.currency = c.currency
where c.day <= :through
"""


def load_fx(engine: sa.Engine, api_base: str, token: str, days: list[date]) -> None:
    """Fetch the API's FX rates for `days` into a table `oracle_fx` on the source."""
    rows = []
    with httpx.Client(base_url=api_base, headers={"Authorization": f"Bearer {token}"}) as client:
        for day in days:
            for _ in range(20):  # the API under test may inject faults
                resp = client.get("/v1/fx-rates", params={"date": day.isoformat()})
                if resp.status_code == 200:
                    break
            resp.raise_for_status()
            for currency, rate in resp.json()["rates"].items():
                rows.append({"day": day, "currency": currency, "rate": Decimal(rate)})
    with engine.begin() as conn:
        conn.execute(sa.text("drop table if exists oracle_fx"))
        conn.execute(
            sa.text(
                "create table oracle_fx (day date, currency text, rate numeric, primary key (day, currency))"
            )
        )
        conn.execute(
            sa.text("insert into oracle_fx (day, currency, rate) values (:day, :currency, :rate)"),
            rows,
        )


def order_days(engine: sa.Engine, tz: str, through: date) -> list[date]:
    with engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                sa.text(
                    "select distinct (created_at at time zone :tz)::date from orders "
                    "where (created_at at time zone :tz)::date <= :through order by 1"
                ),
                {"tz": tz, "through": through},
            )
        ]


def expected_tables(engine: sa.Engine, tz: str, through: date) -> tuple[set, set]:
    """(sales_summary rows, daily_sales rows) as sets of tuples, for days <= through."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(_ORDERS_SQL), {"tz": tz, "through": through}).fetchall()
    missing = [r for r in rows if r.usd is None]
    assert not missing, f"oracle: orders without an FX rate: {missing[:5]}"
    summary: dict[tuple, list] = {}
    daily: dict[tuple, list] = {}
    for day, region, category, usd in rows:
        for key, bucket in (((day, region), summary), ((day, region, category), daily)):
            acc = bucket.setdefault(key, [Decimal("0.00"), 0])
            acc[0] += Decimal(usd)
            acc[1] += 1
    return (
        {(*k, v[0].quantize(Decimal("0.01")), v[1]) for k, v in summary.items()},
        {(*k, v[0].quantize(Decimal("0.01")), v[1]) for k, v in daily.items()},
    )
