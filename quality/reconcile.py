"""Reconciliation gate: what landed is what the warehouse now holds.

After a run's landed files are merged into the build, every landed row must be in
`raw.<table>` with the same version (key and `updated_at`), and per business day (for
orders; per table for the rest) the counts and money sums of the landed rows and of
their merged copies must agree exactly. A mismatch fails the run with the numbers side
by side; nothing is published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# table -> (money expression or None, business-day column or None)
CHECKS: dict[str, dict[str, tuple[str | None, str | None]]] = {
    "source_db": {
        "orders": ("total", "created_at"),
        "order_items": ("quantity * unit_price", None),
        "products": ("price", None),
        "users": (None, None),
    },
    "payments_api": {
        "payments": ("amount", None),
    },
}


class ReconciliationError(RuntimeError):
    """Landed and merged rows disagree; the message lists both sides."""


def _landed_glob(landing_root: Path, source: str, table: str, run_id: str) -> list[str]:
    base = Path(landing_root) / source / table
    dirs = [base / f"run={run_id}", *sorted(base.glob(f"run={run_id}.shard-*"))]
    return [str(d / "*.parquet") for d in dirs if d.is_dir() and any(d.glob("*.parquet"))]


def reconcile_run(
    con: Any, landing_root: Path, source: str, run_id: str, report_tz: str
) -> dict[str, int]:
    """Compare the run's landed rows with `raw` in the (open) build connection."""
    checked: dict[str, int] = {}
    problems: list[str] = []
    for table, (money, day_column) in CHECKS[source].items():
        files = _landed_glob(landing_root, source, table, run_id)
        if not files:
            continue
        money_sql = f"coalesce(sum({money}), 0)" if money else "0"
        day_sql = (
            f"cast(timezone($tz, {day_column}) as date)" if day_column else "cast(null as date)"
        )
        rows = con.execute(
            f"""
            with landed as (
                select * from read_parquet($files, union_by_name = true, hive_partitioning = false)
            ),
            merged as (
                select r.* from raw."{table}" r
                semi join landed l on r.id = l.id and r.updated_at is not distinct from l.updated_at
            ),
            a as (select {day_sql} as day, count(*) as n, {money_sql} as money from landed group by 1),
            b as (select {day_sql} as day, count(*) as n, {money_sql} as money from merged group by 1)
            select coalesce(a.day, b.day), a.n, b.n, a.money, b.money
            from a full outer join b on a.day is not distinct from b.day
            where a.n is distinct from b.n or a.money is distinct from b.money
            order by 1 nulls first
            """,
            {"files": files, "tz": report_tz} if day_column else {"files": files},
        ).fetchall()
        checked[table] = con.execute(
            "select count(*) from read_parquet($files, union_by_name = true, hive_partitioning = false)",
            {"files": files},
        ).fetchone()[0]
        for day, landed_n, merged_n, landed_money, merged_money in rows[:10]:
            where = f"business day {day}" if day is not None else "all rows"
            problems.append(
                f"{source}.{table} {where}: landed {landed_n or 0} rows / {landed_money or 0} "
                f"vs warehouse {merged_n or 0} rows / {merged_money or 0}"
            )
    if problems:
        raise ReconciliationError(
            f"run {run_id}: landed rows and the warehouse disagree:\n  " + "\n  ".join(problems)
        )
    return checked
