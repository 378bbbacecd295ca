"""Nights in any order: a seeded sequence of nightly runs, backfills and source changes,
checked after every run against the independent SQL oracle (tests/e2e/oracle.py).

One sequence = a fresh PostgreSQL source (the demo generator), the demo API on
loopback, a fresh data dir, and 3-6 runs of `pipeline.nightly.run_all` (the DAG's own
step functions, dbt as its real subprocess) for days in any order: repeats, an older
day after a newer one, backfill ranges inside and across published days. Between
some runs the source changes: a played day (new, late and updated orders, deleted
items), a region move, a category move, a cancelled order, a revised FX rate.

After every run: both published tables equal the oracle for every day up to the
published horizon (the latest day any run asked for), hold no later day, agree with
each other for every (date, region), and still hold every day published before
(unless the source no longer has counted orders on it).

Replay one sequence:  .venv/bin/python -m tests.pipeline.nights --seed 17
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import httpx
import sqlalchemy as sa

END = date(2026, 11, 10)  # the generated source's last day
TZ = "America/New_York"
TOKEN = "nights-token"
ADMIN_TOKEN = "nights-fault-token"  # the fault-injection endpoint's own
CHANGES = ("next_day", "region_move", "category_move", "cancel", "fx_revision")


@dataclass
class Sequence:
    """What one seed plays: steps ("run", day) / ("backfill", first, last) / ("change", kind)."""

    seed: int
    steps: list[tuple] = field(default_factory=list)

    def describe(self) -> str:
        return json.dumps({"seed": self.seed, "steps": self.steps}, default=str)


def make_sequence(seed: int) -> Sequence:
    """3-6 runs (a backfill of n days counts n) over days END-4 .. END+2, with changes."""
    rng = random.Random(seed)
    seq = Sequence(seed)
    runs_wanted = rng.randint(3, 6)
    runs = 0
    while runs < runs_wanted:
        if runs and rng.random() < 0.5:
            seq.steps.append(("change", rng.choice(CHANGES)))
        day = END + timedelta(days=rng.randint(-4, 2))
        if runs_wanted - runs >= 2 and rng.random() < 0.3:
            seq.steps.append(("backfill", day - timedelta(days=1), day))
            runs += 2
        else:
            seq.steps.append(("run", day))
            runs += 1
    return seq


# ------------------------------------------------------------------ source changes


def _next_ts(conn: sa.Connection) -> Any:
    """A change time after every stored version (the extract's watermarks follow it)."""
    return conn.execute(
        sa.text(
            "select greatest((select max(updated_at) from users), (select max(updated_at) "
            "from products), (select max(updated_at) from orders), (select max(updated_at) "
            "from order_items)) + interval '1 minute'"
        )
    ).scalar_one()


# kind -> (table, column, values): one row of the table gets one of the values
_MOVES = {
    "region_move": ("users", "region", ["north", "south", "  ", None]),
    "category_move": ("products", "category", ["books", "garden", ""]),
    "cancel": ("orders", "status", ["cancelled"]),
}


def apply_change(kind: str, rng: random.Random, url: str, payments: Path, api: str) -> str:
    """Change the source (or the API's rates) as a real night would; describe it."""
    from demo.generator import apply_next_day

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            played = conn.execute(sa.text("select max(created_at) from orders")).scalar_one()
            day = played.date() + timedelta(days=1)
            if kind in _MOVES:  # the table and column names come from _MOVES, not input
                table, column, values = _MOVES[kind]
                ids = conn.execute(sa.text(f"select id from {table} order by id")).scalars()
                key, value = rng.choice(list(ids)), rng.choice(values)
                conn.execute(
                    sa.text(f"update {table} set {column} = :v, updated_at = :t where id = :id"),
                    {"v": value, "t": _next_ts(conn), "id": key},
                )
                return f"{table} {key}: {column} set to {value!r}"
    finally:
        engine.dispose()
    if kind == "next_day":
        apply_next_day(url, seed=rng.randint(1, 10**6), date=day, payments_db=payments)
        return f"played {day}"
    # fx_revision: the provider revises EUR and GBP of a recent past day
    day = END - timedelta(days=rng.randint(0, 5))
    revised = {"EUR": f"0.{rng.randint(8000, 9999)}", "GBP": f"0.{rng.randint(7000, 8999)}"}
    base = "http://" + api.split("@", 1)[1]
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        current = client.get("/_admin/faults").json().get("fx_revisions", {})
        body = {"fx_revisions": {**current, day.isoformat(): revised}}
        client.post("/_admin/faults", json=body).raise_for_status()
    return f"fx rates of {day} revised to {revised}"


# ------------------------------------------------------------------ checks


def published_tables(warehouse: Path) -> tuple[set, set]:
    """Every row of both published tables (no day filter: later days must not be there)."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        summary = set(
            con.execute(
                "select date, region, total_sales_usd, order_count from analytics.sales_summary"
            ).fetchall()
        )
        daily = set(
            con.execute(
                "select date, region, category, total_sales_usd, order_count "
                "from analytics.daily_sales"
            ).fetchall()
        )
    return summary, daily


def check_after_run(
    url: str, api: str, warehouse: Path, horizon: date, before: set[date]
) -> set[date]:
    """Raise AssertionError naming the difference; return the days now published."""
    from tests.e2e.oracle import expected_tables, load_fx, order_days

    engine = sa.create_engine(url)
    try:
        load_fx(engine, "http://" + api.split("@", 1)[1], TOKEN, order_days(engine, TZ, horizon))
        want_summary, want_daily = expected_tables(engine, TZ, horizon)
    finally:
        engine.dispose()
    summary, daily = published_tables(warehouse)
    assert summary == want_summary, (
        f"sales_summary differs from the oracle through {horizon}: missing "
        f"{sorted(want_summary - summary)[:4]}, extra {sorted(summary - want_summary)[:4]}"
    )
    assert daily == want_daily, (
        f"daily_sales differs from the oracle through {horizon}: missing "
        f"{sorted(want_daily - daily)[:4]}, extra {sorted(daily - want_daily)[:4]}"
    )
    sums: dict[tuple, list] = {}
    for day, region, _, total, count in daily:
        acc = sums.setdefault((day, region), [Decimal(0), 0])
        acc[0] += total
        acc[1] += count
    assert {(d, r, t, c) for (d, r), (t, c) in sums.items()} == summary, "parity broken"
    days = {row[0] for row in summary}
    lost = (before & {row[0] for row in want_summary}) - days
    assert not lost, f"published day(s) removed: {sorted(lost)}"
    return days


# ------------------------------------------------------------------ one sequence


def run_sequence(seed: int, admin_url: str) -> dict[str, Any]:
    """Play one seed in this process; {"ok": bool, "sequence": ..., "log": [...], "error"}."""
    from demo.generator import generate
    from demo.run import running_api
    from demo.servers import fresh_database
    from pipeline import nightly

    seq = make_sequence(seed)
    rng = random.Random(seed * 7919)
    log: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix=f"nights-{seed}-") as tmp,
        fresh_database(admin_url, prefix="nightshift_nights") as url,
    ):
        root = Path(tmp)
        payments = root / "payments.db"
        generate(url, seed=seed, days=8, end_date=END, orders_per_day=6, payments_db=payments)
        os.environ.update(
            NIGHTSHIFT_DATA_DIR=str(root / "data"),
            AIRFLOW_CONN_SOURCE_DB=url,
            NIGHTSHIFT_NO_AIRFLOW_LOOKUP="1",
            REPORT_TZ=TZ,
            FX_REVISION_DAYS="30",  # every generated day: the oracle reads today's rates
        )
        os.environ.pop("WAREHOUSE_PATH", None)
        warehouse = root / "data" / "warehouse.duckdb"
        horizon: date | None = None
        days: set[date] = set()
        with running_api(payments, token=TOKEN, admin_token=ADMIN_TOKEN) as api:
            os.environ["AIRFLOW_CONN_PAYMENTS_API"] = api
            try:
                for step in seq.steps:
                    if step[0] == "change":
                        log.append(apply_change(step[1], rng, url, payments, api))
                        continue
                    first, last = (step[1], step[1]) if step[0] == "run" else step[1:]
                    day = first
                    while day <= last:
                        nightly.run_all(day)
                        horizon = day if horizon is None else max(horizon, day)
                        days = check_after_run(url, api, warehouse, horizon, days)
                        log.append(f"run {day}: ok, published {len(days)} day(s) to {horizon}")
                        day += timedelta(days=1)
            except Exception as exc:  # reported with the sequence, for a replay
                return {"ok": False, "sequence": seq.describe(), "log": log, "error": repr(exc)}
    return {"ok": True, "sequence": seq.describe(), "log": log, "error": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="replay one sequence of nights")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--pg-url", default=os.environ.get("NIGHTSHIFT_TEST_PG_URL"))
    args = parser.parse_args(argv)
    from demo.servers import postgres_server

    with postgres_server() as admin:
        result = run_sequence(args.seed, args.pg_url or admin)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
