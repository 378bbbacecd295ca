"""dbt's source freshness as the quality suite `source_freshness`.

Why: the nightly's `dbt source freshness` (run in the same dbt call as its build) must
land where the on-call looks: `ops.quality_results`, the run's quality counts and their
alert rules, and the gate that stops a run before publish. Per source table: `pass`
passes; `warn` (past `warn_after`) is a warning; `error` (past `error_after`) is a
critical failure that stops the run, unless the run accepts that table's staleness
(`ACCEPT_STALE_SOURCES`: a quiet source, e.g. a holiday), when it is a warning again.
A table dbt could not measure (`runtime error`) is a warning: the build reads the same
table, and fails itself when it cannot. So is a table that holds no rows at all: it has
no age, and emptying a table only gets past the mass-delete guard by the operator's
`ALLOW_MASS_DELETE=1`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from quality.validate import ExpectationOutcome, SuiteResult

SUITE = "source_freshness"
EXPECTATION = "source_is_fresh"


def _hours(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 3600:.1f} h"


def _empty(fresh: Any) -> bool:
    """No rows to date: dbt reports no newest `_loaded_at` (or the minimum timestamp)."""
    return fresh.max_loaded_at is None or str(fresh.max_loaded_at).startswith("0001-01-01")


def _observed(fresh: Any, accepted: bool) -> str:
    """One sentence for the log, the gate's message and `ops.quality_results`."""
    if fresh.status == "runtime error":
        return f"not measured: {fresh.message}"
    if _empty(fresh):
        return "not measured: the table holds no rows"
    name = fresh.table.split(".", 1)[-1]
    text = (
        f"{_hours(fresh.age_s)} since the newest _loaded_at ({fresh.max_loaded_at}) at the "
        f"run's clock ({fresh.snapshotted_at}); warn after {_hours(fresh.warn_after_s)}, "
        f"error after {_hours(fresh.error_after_s)}"
    )
    if fresh.status == "error" and accepted:
        return f"{text}; accepted for this run (ACCEPT_STALE_SOURCES)"
    if fresh.status == "error":
        return (
            f"{text}: nothing is published. If the source is really quiet (a holiday), "
            f"rerun with ACCEPT_STALE_SOURCES={name}; else find why the extract brings no "
            f"new {name} rows (the source, its replica, the extract's watermark)"
        )
    return text


def freshness_results(
    freshness: Sequence[Any], run_id: str, accepted: Collection[str] = ()
) -> SuiteResult:
    """The suite `source_freshness` of one run from its `SourceFreshness` results
    (warehouse/dbt_runner.py). `accepted`: table names (`orders`) or `*` whose error-level
    staleness this run publishes anyway (a warning instead of a critical failure)."""
    outcomes = []
    for fresh in freshness:
        name = fresh.table.split(".", 1)[-1]
        accept = name in accepted or "*" in accepted
        critical = fresh.status == "error" and not accept and not _empty(fresh)
        outcomes.append(
            ExpectationOutcome(
                suite=SUITE,
                table=fresh.table,
                expectation=EXPECTATION,
                column="_loaded_at",
                severity="critical" if critical else "warning",
                success=fresh.status == "pass",
                observed_value=None if fresh.status == "pass" else _observed(fresh, accept),
                details={
                    "status": fresh.status,
                    "age_s": fresh.age_s,
                    "max_loaded_at": fresh.max_loaded_at,
                    "snapshotted_at": fresh.snapshotted_at,
                    "accepted": fresh.status == "error" and accept,
                },
            )
        )
    return SuiteResult(suite=SUITE, table="sources", run_id=run_id, outcomes=outcomes)
