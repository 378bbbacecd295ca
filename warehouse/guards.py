"""Guards of the load: stop before a merge that would delete too much of a table.

A key set that is empty or partial (the source table emptied or restored from an old
backup, a logical replica re-syncing, another database behind the same URL) would make
the loader delete every row it lacks; counts and totals barely move, so no later gate
would notice. `check_mass_delete` measures what the run's key sets would delete, per
table, before anything is merged, and raises `MassDeleteError` naming the counts and
sample keys unless the operator allowed it for this run (then the decision is recorded
in `ops.guard_overrides`, in the load's transaction). Limits: `config/guards.yml`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core import clock, ops

log = logging.getLogger(__name__)


class MassDeleteError(RuntimeError):
    """A load would delete more of a table than the guard allows; nothing was loaded."""


@dataclass(frozen=True)
class DeleteLimit:
    max_share: float = 0.05
    min_rows: int = 10
    max_age_days: int | None = None


@dataclass(frozen=True)
class MassDeleteGuard:
    """The limits of `config/guards.yml` (`mass_delete`), per table."""

    default: DeleteLimit = DeleteLimit()
    tables: dict[str, DeleteLimit] = field(default_factory=dict)

    def limit(self, table: str) -> DeleteLimit:
        return self.tables.get(table, self.default)

    @classmethod
    def load(cls, path: Path | None) -> MassDeleteGuard:
        if path is None or not Path(path).exists():
            return cls()
        raw = (yaml.safe_load(Path(path).read_text()) or {}).get("mass_delete") or {}
        tables = raw.pop("tables", None) or {}
        default = _limit(raw, DeleteLimit(), f"{path}: mass_delete")
        return cls(
            default,
            {
                t: _limit(v or {}, default, f"{path}: mass_delete.tables.{t}")
                for t, v in tables.items()
            },
        )


def _limit(raw: dict[str, Any], base: DeleteLimit, where: str) -> DeleteLimit:
    known = {"max_share", "min_rows", "max_age_days"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid: {sorted(known)}")
    share = raw.get("max_share", base.max_share)
    rows = raw.get("min_rows", base.min_rows)
    age = raw.get("max_age_days", base.max_age_days)
    if not isinstance(share, int | float) or not 0 <= share <= 1:
        raise ValueError(f"{where}: max_share={share!r} must be a number from 0 to 1")
    if not isinstance(rows, int) or rows < 0:
        raise ValueError(f"{where}: min_rows={rows!r} must be a whole number >= 0")
    if age is not None and (not isinstance(age, int) or age < 0):
        raise ValueError(f"{where}: max_age_days={age!r} must be null or a whole number >= 0")
    return DeleteLimit(float(share), rows, age)


@dataclass(frozen=True)
class PlannedDelete:
    """What one table's key sets would delete."""

    table: str
    rows: int
    of_rows: int
    too_old: int
    sample_keys: list[str]
    limit: DeleteLimit

    @property
    def share(self) -> float:
        return self.rows / self.of_rows if self.of_rows else 0.0

    @property
    def trips(self) -> bool:
        too_many = self.rows >= max(self.limit.min_rows, 1) and self.share > self.limit.max_share
        return too_many or self.too_old > 0

    def describe(self) -> str:
        why = (
            f"{self.rows} of {self.of_rows} rows ({self.share:.1%}; the limit is "
            f"{self.limit.max_share:.0%} and at least {self.limit.min_rows} rows)"
        )
        if self.too_old:
            why += (
                f", {self.too_old} of them last updated more than {self.limit.max_age_days} "
                "days ago"
            )
        return f"raw.{self.table}: this run would delete {why}; sample keys {self.sample_keys}"

    def as_json(self) -> str:
        return json.dumps(
            {
                "rows": self.rows,
                "of_rows": self.of_rows,
                "share": round(self.share, 6),
                "too_old": self.too_old,
                "sample_keys": self.sample_keys,
                "max_share": self.limit.max_share,
                "min_rows": self.limit.min_rows,
                "max_age_days": self.limit.max_age_days,
            }
        )


def _session(con: Any) -> Any:
    from warehouse.backends.duckdb import as_session

    return as_session(con)


def plan_delete(
    con: Any,
    table: str,
    target: str,
    gone_sql: str,
    key_text: str,
    limit: DeleteLimit,
) -> PlannedDelete:
    """Measure `gone_sql` (rows of `target` that the key sets lack, alias g) before the
    merge. `con`: a warehouse Session (warehouse.backends) or a DuckDB connection."""
    s = _session(con)
    age_sql = "0"
    params: list[Any] = []
    if limit.max_age_days is not None:
        # the age against the run's clock (core/clock.py), not the warehouse server's
        age_sql = (
            "count(*) filter (where g.updated_at < cast(? as timestamptz) - "
            f"{s.days_interval('cast(? as integer)')})"
        )
        params = [clock.now(), limit.max_age_days]
    rows, too_old = s.fetchone(f"select count(*), {age_sql} from ({gone_sql}) g", params)
    of_rows = s.fetchone(f"select count(*) from {target}")[0]
    sample = [
        r[0] for r in s.fetchall(f"select {key_text} as k from ({gone_sql}) g order by k limit 5")
    ]
    return PlannedDelete(table, int(rows), int(of_rows), int(too_old or 0), sample, limit)


def enforce(
    con: Any,
    planned: list[PlannedDelete],
    *,
    run_id: str,
    allow: bool,
) -> None:
    """Raise MassDeleteError for the tables that trip, or record the operator's override."""
    tripped = [p for p in planned if p.trips]
    if not tripped:
        return
    if not allow:
        raise MassDeleteError(
            "mass delete stopped before the merge, nothing was loaded:\n  "
            + "\n  ".join(p.describe() for p in tripped)
            + "\nThe source's key set looks empty or partial (a table emptied or restored "
            "from an old backup, a replica re-syncing, another database behind the URL). "
            "Check the source; if the deletes are real, rerun the day with "
            "ALLOW_MASS_DELETE=1 (make nightly) or the DAG param allow_mass_delete: the "
            "override is recorded in ops.guard_overrides. Limits: config/guards.yml."
        )
    s = _session(con)
    ops.create(s, "guard_overrides")
    for p in tripped:
        log.warning("mass delete allowed by the operator for run %s: %s", run_id, p.describe())
        s.execute(
            "insert into {ops}.guard_overrides values (?, 'mass_delete', ?, ?, now())",
            [run_id, p.table, p.as_json()],
        )
