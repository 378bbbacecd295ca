"""Phase 2: copy history old → new in keyset-paginated batches, resumable at any point.

Each batch is read from old (`key > checkpoint ORDER BY key LIMIT n`), converted
through the mapping and upserted into new in ONE transaction together with the new
checkpoint (`ops.migration_checkpoints`): a kill before the commit leaves neither the
rows nor the checkpoint, a kill after leaves both, so a resume neither skips nor
doubles (and the upsert makes a repeated batch harmless anyway). Upserts never
replace a newer version written meanwhile by the dual writer. A rows/s limit spares
the production primary; progress (rows, rate, ETA) goes to the log and, on a
terminal, to a bar. The repair log is replayed first. A row the mapping cannot
convert goes to `ops.migration_quarantine` with the error (table, row, field) and the
copy goes on; verification then reports it missing, so no gate passes over it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core import clock
from migrate.db import exact_columns, plan_or_fields, reflect_table, require_columns
from migrate.dual_write import replay_repair_log
from migrate.mapping import MappingError, TableMapping
from migrate.progress import Progress
from migrate.state import checkpoints, ensure_ops, quarantine
from migrate.writer import Tables, upsert

log = logging.getLogger(__name__)

#: Called inside the batch's transaction after the upsert, before the checkpoint (tests
#: inject a crash here to prove the transaction boundary).
BatchHook = Callable[[TableMapping, int], None]


@dataclass(frozen=True)
class BackfillPlan:
    """How a table is copied: `batch_size` rows per transaction, at most
    `rows_per_second` on average (0: no limit), `progress_bar` (None: on a terminal),
    `restart`: from the first key instead of the checkpoint, `hook`: called in each
    batch's transaction (`BatchHook`)."""

    batch_size: int = 5_000
    rows_per_second: float = 0
    progress_bar: bool | None = None
    restart: bool = False
    hook: BatchHook | None = None


@dataclass
class BackfillResult:
    table: str
    rows_copied: int  # by this run
    rows_done: int  # in total, per the checkpoint
    batches: int
    resumed_from: int | None
    seconds: float


def read_checkpoint(conn: Connection, name: str) -> tuple[int | None, int, bool]:
    """(last key, rows done, finished) of a table's backfill."""
    row = conn.execute(
        sa.select(checkpoints.c.last_key, checkpoints.c.rows_done, checkpoints.c.finished_at).where(
            checkpoints.c.table_name == name
        )
    ).first()
    if row is None:
        return None, 0, False
    return row.last_key, row.rows_done, row.finished_at is not None


def _save_checkpoint(
    conn: Connection, name: str, last_key: int | None, rows_done: int, finished: bool
) -> None:
    from sqlalchemy.dialects.postgresql import insert

    now = clock.now()
    values = {
        "table_name": name,
        "last_key": last_key,
        "rows_done": rows_done,
        "finished_at": now if finished else None,
        "updated_at": now,
    }
    stmt = insert(checkpoints).values(values)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["table_name"],
            set_={k: v for k, v in values.items() if k != "table_name"},
        )
    )


def _convert(
    mapping: TableMapping, rows: Sequence[sa.Row]
) -> tuple[list[dict], list[tuple[Any, dict, str]]]:
    """Rows through the mapping; those it cannot convert are set aside with the error."""
    good, bad = [], []
    for row in rows:
        old_row = dict(row._mapping)
        try:
            good.append(mapping.to_new(old_row))
        except MappingError as exc:
            bad.append((old_row[mapping.old_key], old_row, str(exc)))
    return good, bad


def _quarantine(conn: Connection, mapping: TableMapping, bad: list[tuple[Any, dict, str]]) -> None:
    """Keep unconvertible rows readable in ops.migration_quarantine (same transaction as
    the batch). They stay missing in new, so verification and the gates keep failing
    until the row or the mapping is fixed and the key replayed."""
    if not bad:
        return
    now = clock.now()
    for key, _, error in bad:
        log.error("backfill %s: row %s quarantined: %s", mapping.name, key, error)
    conn.execute(
        quarantine.insert(),
        [
            {
                "table_name": mapping.name,
                "row_key": key,
                "error": error,
                "old_row": json.dumps(row, default=str, sort_keys=True),
                "quarantined_at": now,
            }
            for key, row, error in bad
        ],
    )


class _Throttle:
    """Sleeps so the average rate stays at or under `rows_per_second` (0: unlimited)."""

    def __init__(self, rows_per_second: float) -> None:
        self.limit = rows_per_second
        self.started = time.monotonic()
        self.rows = 0

    def after(self, rows: int) -> None:
        self.rows += rows
        if self.limit > 0:
            ahead = self.rows / self.limit - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)


def backfill_table(
    old: Engine,
    new: Engine,
    mapping: TableMapping,
    plan: BackfillPlan | None = None,
    **options: Any,
) -> BackfillResult:
    """Copy `mapping.old_table` into `mapping.new_table` from the checkpoint on, as `plan`
    says (default `BackfillPlan()`; or its fields as keyword `options`, not both)."""
    plan = plan_or_fields(BackfillPlan, plan, options, "backfill")
    started = time.perf_counter()
    ensure_ops(new)
    old_table = reflect_table(old, mapping.old_table)
    require_columns(old_table, mapping.old_columns, old)
    new_table = Tables(new).get(mapping.new_table, mapping.new_columns)
    key = old_table.c[mapping.old_key]
    cols = exact_columns(old_table, list(dict.fromkeys(mapping.old_columns)))
    with new.begin() as conn:
        if plan.restart:
            conn.execute(checkpoints.delete().where(checkpoints.c.table_name == mapping.name))
        last, done, _ = read_checkpoint(conn, mapping.name)
    resumed_from = last
    with old.connect() as conn:
        query = sa.select(sa.func.count()).select_from(old_table)
        remaining = conn.execute(
            query.where(key > last) if last is not None else query
        ).scalar_one()
    progress = Progress(f"backfill {mapping.name}", done + remaining, bar=plan.progress_bar)
    progress.done = done
    throttle = _Throttle(plan.rows_per_second)
    copied = batches = 0
    log.info("backfill %s: from key %s, %d rows left", mapping.name, last, remaining)
    while True:
        with old.connect() as conn:
            query = sa.select(*cols).order_by(key).limit(plan.batch_size)
            rows = conn.execute(query.where(key > last) if last is not None else query).all()
        if not rows:
            break
        new_rows, bad = _convert(mapping, rows)
        last, done = rows[-1]._mapping[mapping.old_key], done + len(rows)
        with new.begin() as conn:
            upsert(conn, new_table, mapping, new_rows)
            _quarantine(conn, mapping, bad)
            if plan.hook is not None:
                plan.hook(mapping, batches)
            _save_checkpoint(conn, mapping.name, last, done, finished=False)
        copied += len(rows)
        batches += 1
        progress.update(len(rows))
        throttle.after(len(rows))
    with new.begin() as conn:
        _save_checkpoint(conn, mapping.name, last, done, finished=True)
    progress.finish()
    return BackfillResult(
        mapping.name, copied, done, batches, resumed_from, time.perf_counter() - started
    )


def run_backfill(
    old: Engine,
    new: Engine,
    mappings: Mapping[str, TableMapping],
    tables: Sequence[TableMapping],
    plan: BackfillPlan | None = None,
    **options: Any,
) -> tuple[int, list[BackfillResult]]:
    """Replay the repair log, then backfill each table as `plan` says (or its fields as
    keyword `options`); returns (replayed, results)."""
    plan = plan_or_fields(BackfillPlan, plan, options, "backfill")
    replayed = replay_repair_log(old, new, mappings)
    results = [backfill_table(old, new, m, plan) for m in tables]
    # Writes that failed during the copy are queued meanwhile: replay them too.
    replayed += replay_repair_log(old, new, mappings)
    return replayed, results
