"""daily_sales and the parity gate on every warehouse backend: the same raw tables on a
DuckDB file (by path, as the nightly calls it today), a DuckDB build and a PostgreSQL
build (a fresh database) give the same `analytics.daily_sales` rows and types, the same
`ops.daily_sales_days` (its load timestamp aside), the same incremental second run, and
the same parity verdicts; each also equals rows worked out by hand.

On PostgreSQL the raw text columns get a linguistic collation (ICU `und`, where
'uncategorized' sorts before 'Zebra'), so the top-item tie-break must compare bytes
explicitly to give the contract's answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from quality.parity import ParityError, check_sales_parity
from tests.transform.test_daily_sales import (
    EXPECTED_THROUGH_0309,
    FX_ROWS,
    ITEM_ROWS,
    NY,
    ORDER_ROWS,
    PRODUCTS,
    USERS,
    fx_table,
    items_table,
    orders_table,
    utc,
)
from transform.daily_sales import (
    DaysPlan,
    MissingFxRateError,
    compute_daily_sales,
    fx_digests,
    plan_daily_sales,
    publish_daily_sales,
)
from warehouse.backends.base import Session
from warehouse.backends.duckdb import DuckDBWarehouse
from warehouse.backends.postgres import PostgresWarehouse

KINDS = ("duckdb-path", "duckdb-build", "postgres")
THROUGH = date(2026, 3, 9)
DAYS = [date(2026, 3, 6), date(2026, 3, 7), date(2026, 3, 8), date(2026, 3, 9)]
LINGUISTIC = "und-x-icu"

# what every backend must read back from analytics.daily_sales
ARROW_TYPES = [
    ("date", pa.date32()),
    ("region", pa.string()),
    ("category", pa.string()),
    ("total_sales_usd", pa.decimal128(18, 2)),
    ("order_count", pa.int64()),
]


class Target:
    """One backend. `where` and `kw` are what the transform is called with: the DuckDB
    file path alone, or a Warehouse and `build=`."""

    def __init__(self, kind: str, tmp_path: Path, pg_url: str | None = None) -> None:
        self.kind = kind
        self.collation: str | None = None
        if kind == "postgres":
            assert pg_url is not None
            self.warehouse: Any = PostgresWarehouse(pg_url)
            with self.warehouse.transaction() as s:
                if s.fetchone("select count(*) from pg_collation where collname = ?", [LINGUISTIC])[
                    0
                ]:
                    self.collation = LINGUISTIC
        else:
            self.warehouse = DuckDBWarehouse(tmp_path / f"{kind}.duckdb")
        self.build = self.warehouse.begin_build("r1") if kind != "duckdb-path" else None
        self.where: Any = self.warehouse.path if kind == "duckdb-path" else self.warehouse
        self.kw: dict[str, Any] = {"build": self.build} if self.build is not None else {}

    def session(self) -> AbstractContextManager[Session]:
        return self.warehouse.transaction(self.build)

    def read(self, sql: str, params: list | None = None, *, published: bool = False) -> pa.Table:
        build = None if published else self.build
        return self.warehouse.read_arrow(sql, params or [], build=build)

    def create(self, schema: str, table: str, data: pa.Table, *, collate: bool = False) -> None:
        """`<schema>.<table>` (replaced) with the engine's types for `data`'s, and its rows."""
        with self.session() as s:
            s.execute(f"create schema if not exists {{{schema}}}")
            relation = s.table(schema, table)
            s.execute(f"drop table if exists {relation}")
            columns = []
            for f in data.schema:
                native = s.column_type(f.type)
                if collate and self.collation and pa.types.is_string(f.type):
                    native += f' collate "{self.collation}"'
                columns.append(f'"{f.name}" {native}')
            s.execute(f"create table {relation} ({', '.join(columns)})")
            s.insert_arrow(relation, data)

    def execute(self, sql: str, params: list | None = None) -> None:
        with self.session() as s:
            s.execute(sql, params or [])

    # the nightly's three calls
    def plan(self, run_id: str, *, full: bool = False):
        return plan_daily_sales(self.where, NY, THROUGH, run_id, full=full, **self.kw)

    def compute(self, plan: DaysPlan | None = None, through: date | None = THROUGH):
        return compute_daily_sales(self.where, NY, through, plan=plan, **self.kw)

    def refresh(self, run_id: str):
        plan = self.plan(run_id)
        publish_daily_sales(self.compute(plan), self.where, plan, **self.kw)
        return plan

    def parity(self, **options: Any) -> dict[str, Any]:
        return check_sales_parity(self.where, **options, **self.kw)


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    url = request.getfixturevalue("pg_database") if request.param == "postgres" else None
    yield make_target(request.param, tmp_path, url)


def make_target(kind: str, tmp_path: Path, pg_url: str | None = None) -> Target:
    t = Target(kind, tmp_path, pg_url)
    load_raw(t)
    return t


def load_raw(t: Target) -> None:
    t.create("raw", "users", USERS, collate=True)
    t.create("raw", "products", PRODUCTS, collate=True)
    t.create("raw", "orders", orders_table(ORDER_ROWS), collate=True)
    t.create("raw", "order_items", items_table(ITEM_ROWS), collate=True)
    t.create("raw", "fx_rates", fx_table(FX_ROWS), collate=True)


# ------------------------------------------------------------------ reading back


def rows_of(table: pa.Table) -> list[tuple]:
    """Rows in Python's order (bytewise for text), whatever the engine's collation."""
    return sorted(zip(*(c.to_pylist() for c in table.columns), strict=True))


def daily_sales(t: Target, *, published: bool = False) -> tuple[list, list[tuple]]:
    table = t.read("select * from {analytics}.daily_sales", published=published)
    return [(f.name, f.type) for f in table.schema], rows_of(table)


def days_state(t: Target) -> list[tuple]:
    """`ops.daily_sales_days` without its load timestamp (checked to be set, aware)."""
    table = t.read("select * from {ops}.daily_sales_days")
    assert table.column_names == [
        "business_date",
        "report_tz",
        "fx_digest",
        "run_id",
        "computed_at",
    ]
    stamps = table.column("computed_at").to_pylist()
    assert stamps and all(s is not None and s.tzinfo is not None for s in stamps)
    return rows_of(table.drop_columns(["computed_at"]))


def digest(fx: list[tuple], day: date) -> str:
    """Independent of the transform: the day's `CUR=rate` list at the column's 18 places."""
    entries = sorted((c, Decimal(r)) for d, c, r in fx if d == day)
    return hashlib.md5(",".join(f"{c}={r:.18f}" for c, r in entries).encode()).hexdigest()


def changed(fx: list[tuple], day: date, currency: str, rate: str) -> list[tuple]:
    return [(d, c, rate if (d, c) == (day, currency) else r) for d, c, r in fx]


# after the second run: order 8 (03-08) now 60.00 EUR / 0.92 = 65.2174; EUR on 03-09 is
# 0.5, so order 7's 0.01 EUR is 0.02 USD. Order 6 (03-07) changed too, but no run
# restated that day: its row must stay as it was.
FX_SECOND = changed(FX_ROWS, date(2026, 3, 9), "EUR", "0.5")
EXPECTED_SECOND = [
    (date(2026, 3, 8), "EU", "books", Decimal("65.22"), 1)
    if r[0] == date(2026, 3, 8)
    else (date(2026, 3, 9), "EU", "games", Decimal("0.02"), 1)
    if r[0] == date(2026, 3, 9)
    else r
    for r in EXPECTED_THROUGH_0309
]


def second_run_changes(t: Target) -> None:
    """What a second night's load leaves: two order updates (one day restated), a new rate."""
    t.execute("update {raw}.orders set total = ? where id = ?", [Decimal("60.00"), 8])
    t.execute("update {raw}.orders set total = ? where id = ?", [Decimal("99.00"), 6])
    t.execute(
        "update {raw}.fx_rates set rate = ? where rate_date = ? and currency = ?",
        [Decimal("0.5"), date(2026, 3, 9), "EUR"],
    )
    restated = pa.table(
        {
            "run_id": pa.array(["r2"], pa.string()),
            "business_date": pa.array([date(2026, 3, 8)], pa.date32()),
            "reason": pa.array(["order_changed"], pa.string()),
        }
    )
    t.create("ops", "restated_days", restated)


def run_scenario(t: Target) -> dict[str, Any]:
    """First night (full), second night (incremental); what each left behind."""
    out: dict[str, Any] = {}
    first = t.refresh("r1")
    out["first_plan"] = (first.full, first.days)
    out["first_rows"] = daily_sales(t)
    out["first_days"] = days_state(t)
    second_run_changes(t)
    second = t.refresh("r2")
    out["second_plan"] = (second.full, second.days)
    out["second_rows"] = daily_sales(t)
    out["second_days"] = days_state(t)
    return out


# ------------------------------------------------------------------ tests


def test_full_then_incremental_rows_equal_the_hand_computed_ones(target: Target) -> None:
    got = run_scenario(target)

    assert got["first_plan"] == (True, DAYS)
    assert got["first_rows"] == (ARROW_TYPES, sorted(EXPECTED_THROUGH_0309))
    assert got["first_days"] == [(d, NY, digest(FX_ROWS, d), "r1") for d in DAYS]

    assert got["second_plan"] == (False, [date(2026, 3, 8), date(2026, 3, 9)])
    assert got["second_rows"] == (ARROW_TYPES, sorted(EXPECTED_SECOND))
    assert got["second_days"] == [
        (date(2026, 3, 6), NY, digest(FX_ROWS, date(2026, 3, 6)), "r1"),
        (date(2026, 3, 7), NY, digest(FX_ROWS, date(2026, 3, 7)), "r1"),
        (date(2026, 3, 8), NY, digest(FX_SECOND, date(2026, 3, 8)), "r2"),
        (date(2026, 3, 9), NY, digest(FX_SECOND, date(2026, 3, 9)), "r2"),
    ]
    # nothing more to do on a third look at the same state
    assert target.plan("r2").days == [date(2026, 3, 8)]  # only what r2 restated
    assert target.plan("r3").days == []

    if target.build is not None:  # the run's rows become the published ones
        target.warehouse.publish(target.build)
        assert daily_sales(target, published=True) == got["second_rows"]


def test_every_backend_leaves_the_same_tables(pg_database: str, tmp_path: Path) -> None:
    results = {
        kind: run_scenario(make_target(kind, tmp_path, pg_database if kind == "postgres" else None))
        for kind in KINDS
    }
    reference = results["duckdb-path"]
    for kind in KINDS[1:]:
        assert results[kind] == reference, kind


def test_fx_digest_is_the_one_duckdb_recorded_before(tmp_path: Path) -> None:
    """Digests already stored in `ops.daily_sales_days` (made by DuckDB SQL) stay valid:
    an unchanged rate must not restate its day."""
    t = make_target("duckdb-path", tmp_path)
    with duckdb.connect(str(t.warehouse.path), read_only=True) as con:
        stored = dict(
            con.execute(
                "select rate_date, md5(string_agg(currency || '=' || cast(rate as varchar), ',' "
                "order by currency)) from raw.fx_rates group by rate_date"
            ).fetchall()
        )
    assert fx_digests(lambda sql, params: t.read(sql, list(params))) == stored
    assert stored[date(2026, 3, 9)] == digest(FX_ROWS, date(2026, 3, 9))


def test_errors_name_the_day_and_the_key(target: Target) -> None:
    # order 9 (GBP on 2026-03-10) has no rate for its day
    with pytest.raises(MissingFxRateError, match=r"'GBP' on business day 2026-03-10"):
        target.compute(through=None)
    # a second version of user 1 would count its orders twice
    second = pa.table(
        {
            "id": pa.array([1], pa.int64()),
            "email": ["a@x"],
            "region": ["APAC"],
            "favourite_colour": ["red"],
            "updated_at": pa.array(
                [utc("2026-03-09T07:00:00")], USERS.schema.field("updated_at").type
            ),
        }
    )
    target.create("raw", "users", pa.concat_tables([USERS, second]), collate=True)
    with pytest.raises(ValueError, match=r"raw\.users holds more than one row for id\(s\) \[1\]"):
        target.compute()


def sales_summary(rows: list[tuple]) -> pa.Table:
    """The ELT side as dbt would build it: daily_sales summed per (date, region)."""
    sums: dict[tuple[date, str], tuple[Decimal, int]] = {}
    for day, region, _category, total, count in rows:
        old = sums.get((day, region), (Decimal("0.00"), 0))
        sums[(day, region)] = (old[0] + total, old[1] + count)
    keys = sorted(sums)
    return pa.table(
        {
            "date": pa.array([k[0] for k in keys], pa.date32()),
            "region": pa.array([k[1] for k in keys], pa.string()),
            "order_count": pa.array([sums[k][1] for k in keys], pa.int64()),
            "total_sales_usd": pa.array([sums[k][0] for k in keys], pa.decimal128(18, 2)),
        }
    )


def test_parity_passes_when_the_paths_agree_and_names_the_row_when_not(target: Target) -> None:
    target.refresh("r1")
    target.create("analytics", "sales_summary", sales_summary(EXPECTED_THROUGH_0309))
    assert target.parity() == {
        "sales_summary_rows": 6,
        "daily_sales_rows": 7,
        "days_checked": 4,
        "mismatches": 0,
    }

    # the ELT side is off by a cent for the US on 03-07 and lacks EU on 03-09
    target.execute(
        "update {analytics}.sales_summary set total_sales_usd = total_sales_usd + ? "
        "where date = ? and region = ?",
        [Decimal("0.01"), date(2026, 3, 7), "US"],
    )
    target.execute(
        "delete from {analytics}.sales_summary where date = ? and region = ?",
        [date(2026, 3, 9), "EU"],
    )
    with pytest.raises(ParityError) as err:
        target.parity()
    message = str(err.value)
    assert "disagree on 2 (date, region) row(s)" in message
    assert (
        "2026-03-07 'US': order_count etl=2 elt=2; total_sales_usd etl=27.50 elt=27.51" in message
    )
    assert "2026-03-09 'EU': order_count etl=1 elt=None; total_sales_usd etl=0.01 elt=None" in (
        message
    )
    assert message.index("2026-03-07 'US'") < message.index("2026-03-09 'EU'")

    # the days before the disagreement still agree
    assert target.parity(through_date=date(2026, 3, 6)) == {
        "sales_summary_rows": 1,
        "daily_sales_rows": 1,
        "days_checked": 1,
        "mismatches": 0,
    }
    with pytest.raises(ParityError, match=r"disagree on 1 \(date, region\) row\(s\)"):
        target.parity(through_date=date(2026, 3, 8))
