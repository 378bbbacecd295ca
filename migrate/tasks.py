"""The migration's steps with connections resolved at the edge: used by the
`migration_verify` DAG and by `python -m migrate`. Each returns a small dict.

Connections follow `core.settings` (AIRFLOW_CONN_<ID> first, then Airflow's own
lookup): `source_db` is the old database, `migration_target_db` the new one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from core.settings import get_connection_uri
from migrate.backfill import run_backfill
from migrate.checks import DEFAULT_REQUIRED_CLEAN_RUNS, GateFailed, decide, record_check
from migrate.db import make_engine, plan_or_fields
from migrate.mapping import load_mappings, select_mappings
from migrate.verify import verify_table

log = logging.getLogger(__name__)

OLD_CONN_ID = "source_db"
NEW_CONN_ID = "migration_target_db"
#: Phases whose DAG run backfills (2: copy history; 3: catch up before verifying).
BACKFILL_PHASES = (2, 3)


def engines(old_conn_id: str, new_conn_id: str) -> tuple[Engine, Engine]:
    """Engines of the old and new databases from their connection ids."""
    old = make_engine(get_connection_uri(old_conn_id) or "")
    new = make_engine(get_connection_uri(new_conn_id) or "")
    return old, new


def table_names(tables: Sequence[str] | str | None, config: str | Path | None = None) -> list[str]:
    """Mapping names to work on ('all' / empty: every table of the mapping file)."""
    if isinstance(tables, str):
        tables = [t.strip() for t in tables.split(",") if t.strip() and t.strip() != "all"]
    return [m.name for m in select_mappings(load_mappings(config), tables or None)]


def backfill(
    old_conn_id: str,
    new_conn_id: str,
    tables: Sequence[str],
    *,
    config: str | Path | None = None,
    **opts: Any,
) -> dict:
    mappings = load_mappings(config)
    old, new = engines(old_conn_id, new_conn_id)
    try:
        replayed, results = run_backfill(
            old, new, mappings, select_mappings(mappings, tables), **opts
        )
    finally:
        old.dispose()
        new.dispose()
    return {
        "replayed": replayed,
        "tables": {r.table: {"copied": r.rows_copied, "rows_done": r.rows_done} for r in results},
    }


def verify(
    old_conn_id: str,
    new_conn_id: str,
    table: str,
    *,
    phase: int,
    run_id: str,
    config: str | Path | None = None,
    **opts: Any,
) -> dict:
    """Verify one table and store the result in ops.migration_checks."""
    mapping = select_mappings(load_mappings(config), [table])[0]
    old, new = engines(old_conn_id, new_conn_id)
    try:
        result = verify_table(old, new, mapping, **opts)
        record_check(new, run_id, phase, result)
    finally:
        old.dispose()
        new.dispose()
    log.info("%s", result.summary())
    return {
        "table": result.table,
        "clean": result.clean,
        "rows_compared": result.rows_compared,
        "missing": result.missing_count,
        "extra": result.extra_count,
        "changed": result.changed_count,
        "sample_keys": result.sample_keys(5),
    }


@dataclass(frozen=True)
class GatePlan:
    """How `gate` decides: the decision is recorded under `run_id`; phase 4 needs the last
    `required_clean_runs` verifications of every table clean; `config`: the mapping file
    the table names come from (None: the default one)."""

    run_id: str
    required_clean_runs: int = DEFAULT_REQUIRED_CLEAN_RUNS
    config: str | Path | None = None


def gate(
    old_conn_id: str,
    new_conn_id: str,
    phase: int,
    tables: Sequence[str],
    plan: GatePlan | None = None,
    **options: Any,
) -> dict:
    """Decide and record the gate of `phase` for `tables` as `plan` says (or its fields as
    keyword `options`, not both); raises GateFailed (naming the gate) on no-go."""
    plan = plan_or_fields(GatePlan, plan, options, "gate")
    mappings = select_mappings(load_mappings(plan.config), tables)
    old, new = engines(old_conn_id, new_conn_id)
    try:
        decision = decide(
            old, new, phase, mappings, plan.run_id, required_clean_runs=plan.required_clean_runs
        )
    finally:
        old.dispose()
        new.dispose()
    if not decision.allowed:
        raise GateFailed(decision.message())
    return {"phase": phase, "allowed": True, "reason": decision.reason}
