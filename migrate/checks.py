"""Verification records (`ops.migration_checks`) and the go/no-go gate of each phase.

Phases: 1 dual writes, 2 backfill, 3 read from new (and verify), 4 stop writing old,
5 decommission old. Every gate decision, allowed or not, goes to
`ops.migration_gates` with the reason, so the cutover has an audit trail. Gates:

- 1 `new_schema`: every mapped new table exists.
- 2 `dual_writes`: phase 1 was allowed before.
- 3 `backfill_complete` (every table's backfill reached the end) and `verified`
  (each table's latest verification is clean).
- 4 `clean_runs` (the last N verifications of every table are clean, N =
  `required_clean_runs`) and `repair_log` (no unreplayed repair-log entry).
- 5 `phase4_recorded`: phase 4 was allowed before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import clock
from migrate.dual_write import pending_repairs
from migrate.mapping import TableMapping
from migrate.state import checkpoints, checks, ensure_ops, gates
from migrate.verify import VerifyResult

log = logging.getLogger(__name__)

PHASES = {
    1: "dual writes",
    2: "backfill",
    3: "read from new and verify",
    4: "stop writing old",
    5: "decommission old",
}
DEFAULT_REQUIRED_CLEAN_RUNS = 3


class GateFailed(RuntimeError):
    """A phase's gate said no; the message names the gate and why."""


@dataclass(frozen=True)
class GateDecision:
    phase: int
    allowed: bool
    failed_gate: str | None
    reason: str

    def message(self) -> str:
        name = f"phase {self.phase} ({PHASES[self.phase]})"
        if self.allowed:
            return f"{name}: GO: {self.reason}"
        return f"{name}: NO-GO: gate {self.failed_gate!r} failed: {self.reason}"


def record_check(new: Engine, run_id: str, phase: int, result: VerifyResult) -> None:
    """Store one verification in ops.migration_checks."""
    ensure_ops(new)
    with new.begin() as conn:
        conn.execute(
            checks.insert(),
            {
                "run_id": run_id,
                "phase": phase,
                "table_name": result.table,
                "rows_old": result.rows_old,
                "rows_new": result.rows_new,
                "rows_compared": result.rows_compared,
                "missing": result.missing_count,
                "extra": result.extra_count,
                "changed": result.changed_count,
                "sample_keys": json.dumps(result.sample_keys()),
                "clean": result.clean,
                "seconds": result.seconds,
                "checked_at": clock.now(),
            },
        )


def _phase_allowed_before(new: Engine, phase: int) -> bool:
    with new.connect() as conn:
        found = conn.execute(
            sa.select(gates.c.id).where(gates.c.phase == phase, gates.c.allowed).limit(1)
        ).first()
    return found is not None


def _existing_tables(new: Engine, tables: Sequence[TableMapping]) -> list[str]:
    names = set(sa.inspect(new).get_table_names())
    return [m.new_table for m in tables if m.new_table not in names]


def _unfinished_backfills(new: Engine, tables: Sequence[TableMapping]) -> list[str]:
    with new.connect() as conn:
        done = {
            row.table_name
            for row in conn.execute(
                sa.select(checkpoints.c.table_name).where(checkpoints.c.finished_at.is_not(None))
            )
        }
    return [m.name for m in tables if m.name not in done]


def _recent_checks(new: Engine, table: str, n: int) -> list[sa.Row]:
    with new.connect() as conn:
        return conn.execute(
            sa.select(checks)
            .where(checks.c.table_name == table)
            .order_by(checks.c.id.desc())
            .limit(n)
        ).all()


def _describe(row: sa.Row) -> str:
    return f"missing {row.missing}, extra {row.extra}, changed {row.changed} (run {row.run_id})"


def _clean_run_problems(new: Engine, tables: Sequence[TableMapping], n: int) -> list[str]:
    problems = []
    for m in tables:
        recent = _recent_checks(new, m.name, n)
        streak = 0
        for row in recent:
            if not row.clean:
                break
            streak += 1
        if streak < n:
            detail = f"; last unclean: {_describe(recent[streak])}" if streak < len(recent) else ""
            problems.append(f"{m.name} has {streak} of {n} consecutive clean verifications{detail}")
    return problems


def evaluate_gate(
    old: Engine,
    new: Engine,
    phase: int,
    tables: Sequence[TableMapping],
    *,
    required_clean_runs: int = DEFAULT_REQUIRED_CLEAN_RUNS,
) -> GateDecision:
    """Decide whether `phase` may start (nothing recorded; see `decide`)."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not one of {', '.join(map(str, PHASES))}")
    ensure_ops(new)

    def no(gate: str, reason: str) -> GateDecision:
        return GateDecision(phase, False, gate, reason)

    if phase == 1:
        absent = _existing_tables(new, tables)
        if absent:
            return no("new_schema", f"new table(s) missing: {', '.join(absent)}")
        return GateDecision(phase, True, None, "the new schema exists; turn dual writes on")
    if phase == 2:
        if not _phase_allowed_before(new, 1):
            return no("dual_writes", "phase 1 (dual writes) was never allowed")
        return GateDecision(phase, True, None, "dual writes are on; backfill may run")
    if phase == 3:
        unfinished = _unfinished_backfills(new, tables)
        if unfinished:
            return no("backfill_complete", f"backfill not finished for {', '.join(unfinished)}")
        problems = _clean_run_problems(new, tables, 1)
        if problems:
            return no("verified", "; ".join(problems))
        return GateDecision(phase, True, None, "backfill done and the latest verifications clean")
    if phase == 4:
        if required_clean_runs < 1:
            raise ValueError(f"required_clean_runs={required_clean_runs} must be >= 1")
        problems = _clean_run_problems(new, tables, required_clean_runs)
        if problems:
            return no("clean_runs", "; ".join(problems))
        pending = pending_repairs(old)
        if pending:
            return no(
                "repair_log",
                f"{pending} repair-log entries not replayed yet (run the backfill to replay)",
            )
        return GateDecision(
            phase,
            True,
            None,
            f"{required_clean_runs} consecutive clean verifications per table, repair log empty",
        )
    if not _phase_allowed_before(new, 4):
        return no("phase4_recorded", "phase 4 (stop writing old) was never allowed")
    return GateDecision(
        phase, True, None, "phase 4 was allowed: the old database may be decommissioned"
    )


def decide(
    old: Engine,
    new: Engine,
    phase: int,
    tables: Sequence[TableMapping],
    run_id: str,
    *,
    required_clean_runs: int = DEFAULT_REQUIRED_CLEAN_RUNS,
) -> GateDecision:
    """Evaluate the gate of `phase` and record the decision in ops.migration_gates."""
    decision = evaluate_gate(old, new, phase, tables, required_clean_runs=required_clean_runs)
    with new.begin() as conn:
        conn.execute(
            gates.insert(),
            {
                "run_id": run_id,
                "phase": phase,
                "allowed": decision.allowed,
                "failed_gate": decision.failed_gate,
                "reason": decision.reason,
                "decided_at": clock.now(),
            },
        )
    (log.info if decision.allowed else log.error)("%s", decision.message())
    return decision
