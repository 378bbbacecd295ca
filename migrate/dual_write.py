"""The application side of phase 1: write old, then new; never fail the user for new.

    writer = DualWriter(old_engine, new_engine, mappings)
    with writer.transaction() as tx:          # the user's transaction, on the old DB
        tx.insert("orders", {...})
        tx.update("orders", 42, {"status": "paid", "updated_at": now})
    # committed on old; then the same rows are written to new through the mapping

After the old transaction commits, every row it touched is read back (inside it, so
the new side gets the full committed row even for partial updates) and written to the
new database in one transaction. If that fails, the keys go to the repair log in the
old database and the request still succeeds; `replay_repair_log` (run by the backfill)
copies the current old rows over later. A crash of the application between the old
commit and the repair-log insert loses only the log entry, never data: verification
finds the row and `python -m migrate verify --repair` queues it.

Shadow reads (phase 3): `shadow_read` reads both, returns the old row and records any
difference in `migration_shadow_diffs`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core import clock
from migrate.mapping import TableMapping, mappings_of_old_table
from migrate.state import ensure_journal, repair_log, shadow_diffs
from migrate.writer import Tables, apply_old_rows, read_old_rows

log = logging.getLogger(__name__)


def _now() -> datetime:
    return clock.now()


@dataclass
class DualTransaction:
    """The user's transaction on the old database; remembers what it touched."""

    conn: Connection
    writer: DualWriter
    touched: list[tuple[str, Any]] = field(default_factory=list)

    def _table(self, name: str) -> sa.Table:
        return self.writer.old_tables.get(name)

    def insert(self, table: str, row: Mapping[str, Any]) -> None:
        self.conn.execute(self._table(table).insert(), dict(row))
        self.touched.append((table, row[self.writer.old_key(table)]))

    def update(self, table: str, key: Any, values: Mapping[str, Any]) -> None:
        t = self._table(table)
        self.conn.execute(t.update().where(t.c[self.writer.old_key(table)] == key).values(values))
        self.touched.append((table, key))

    def delete(self, table: str, key: Any) -> None:
        t = self._table(table)
        self.conn.execute(t.delete().where(t.c[self.writer.old_key(table)] == key))
        self.touched.append((table, key))

    def committed_rows(self) -> dict[str, tuple[list[Any], dict[Any, dict]]]:
        """Per old table: the touched keys and their rows as this transaction leaves them."""
        out: dict[str, tuple[list[Any], dict[Any, dict]]] = {}
        for table in dict.fromkeys(t for t, _ in self.touched):
            keys = list(dict.fromkeys(k for t, k in self.touched if t == table))
            rows = read_old_rows(self.conn, self._table(table), self.writer.old_key(table), keys)
            out[table] = (keys, rows)
        return out


class DualWriter:
    """Writes to old (authoritative) and then to new; failures on new go to the repair log."""

    def __init__(self, old: Engine, new: Engine, mappings: Mapping[str, TableMapping]) -> None:
        self.old, self.new, self.mappings = old, new, mappings
        self.old_tables = Tables(old)
        self.new_tables = Tables(new)
        self.new_failures = 0
        ensure_journal(old)

    def old_key(self, old_table: str) -> str:
        found = mappings_of_old_table(self.mappings, old_table)
        if not found:
            raise KeyError(f"old table {old_table!r} is not in the migration mapping")
        return found[0].old_key

    @contextlib.contextmanager
    def transaction(self) -> Iterator[DualTransaction]:
        """The user's transaction: old commits (or raises, as before); then new, best effort."""
        with self.old.begin() as conn:
            tx = DualTransaction(conn, self)
            yield tx
            rows = tx.committed_rows()
        self.write_new(rows)

    def write_new(self, rows: Mapping[str, tuple[list[Any], dict[Any, dict]]]) -> bool:
        """Write committed old rows to new in one transaction; False (logged) on failure."""
        try:
            with self.new.begin() as conn:
                for old_table, (keys, old_rows) in rows.items():
                    apply_old_rows(conn, self.new_tables, self.mappings, old_table, keys, old_rows)
            return True
        except Exception as exc:  # the user's request must not fail because of new
            self.new_failures += 1
            entries = [(table, key) for table, (keys, _) in rows.items() for key in keys]
            record_repairs(self.old, entries, f"dual write failed: {type(exc).__name__}: {exc}")
            return False

    def shadow_read(self, old_table: str, key: Any) -> dict[str, Any] | None:
        """Read old and new; return old; record in migration_shadow_diffs if they differ."""
        table = self.old_tables.get(old_table)
        with self.old.connect() as conn:
            old_row = read_old_rows(conn, table, self.old_key(old_table), [key]).get(key)
        for mapping in mappings_of_old_table(self.mappings, old_table):
            try:
                diff = self._shadow_compare(mapping, key, old_row)
            except Exception as exc:  # a shadow read must not fail the user's read either
                diff = ([], f"new unreadable: {type(exc).__name__}: {exc}")
            if diff is not None:
                self._record_shadow_diff(mapping, key, *diff)
        return old_row

    def _shadow_compare(
        self, mapping: TableMapping, key: Any, old_row: Mapping[str, Any] | None
    ) -> tuple[list[str], str] | None:
        table = self.new_tables.get(mapping.new_table, mapping.new_columns)
        with self.new.connect() as conn:
            found = conn.execute(sa.select(table).where(table.c[mapping.new_key] == key)).first()
        new_row = dict(found._mapping) if found else None
        if old_row is None and new_row is None:
            return None
        if new_row is None:
            return [], "missing in new"
        if old_row is None:
            return [], "extra in new (deleted in old)"
        expected = mapping.to_new(old_row)
        cols = [c.old for c in mapping.columns if expected[c.new] != new_row[c.new]]
        if not cols:
            return None
        detail = {
            c.old: [str(expected[c.new]), str(new_row[c.new])]
            for c in mapping.columns
            if c.old in cols
        }
        return cols, json.dumps(detail)

    def _record_shadow_diff(
        self, mapping: TableMapping, key: Any, cols: list[str], detail: str
    ) -> None:
        log.warning("shadow read %s key %s differs: %s %s", mapping.name, key, cols, detail)
        with self.old.begin() as conn:
            conn.execute(
                shadow_diffs.insert(),
                {
                    "table_name": mapping.name,
                    "row_key": key,
                    "columns": json.dumps(cols),
                    "detail": detail,
                    "read_at": _now(),
                },
            )


# ------------------------------------------------------------------ the repair log


def record_repairs(old: Engine, entries: Sequence[tuple[str, Any]], reason: str) -> int:
    """Queue (old table, key) pairs for replay; durable in the old database."""
    if not entries:
        return 0
    now = _now()
    rows = [
        {"old_table": t, "row_key": k, "reason": reason[:1000], "created_at": now}
        for t, k in entries
    ]
    try:
        with old.begin() as conn:
            conn.execute(repair_log.insert(), rows)
    except Exception:
        # Last resort: the keys are in the log; verification will find the rows anyway.
        log.exception("could not record %d repair-log entries: %s (%s)", len(rows), entries, reason)
        return 0
    log.warning("repair log: %d row(s) queued: %s", len(rows), reason)
    return len(rows)


def pending_repairs(old: Engine) -> int:
    """Repair-log entries not yet replayed (phase 4 needs zero)."""
    ensure_journal(old)
    with old.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count())
            .select_from(repair_log)
            .where(repair_log.c.replayed_at.is_(None))
        ).scalar_one()


def replay_repair_log(
    old: Engine, new: Engine, mappings: Mapping[str, TableMapping], *, batch: int = 500
) -> int:
    """Copy the current old rows of every pending entry to new, then mark them replayed.

    The new side is committed before the entries are marked, so a crash in between only
    replays them again (the writes are idempotent upserts/deletes).
    """
    ensure_journal(old)
    old_tables, new_tables = Tables(old), Tables(new)
    done = 0
    while True:
        with old.connect() as conn:
            entries = conn.execute(
                sa.select(repair_log.c.id, repair_log.c.old_table, repair_log.c.row_key)
                .where(repair_log.c.replayed_at.is_(None))
                .order_by(repair_log.c.id)
                .limit(batch)
            ).all()
            if not entries:
                return done
            by_table: dict[str, list[Any]] = {}
            for _, table, key in entries:
                by_table.setdefault(table, []).append(key)
            rows = {}
            for table, keys in by_table.items():
                mapping = mappings_of_old_table(mappings, table)
                if not mapping:
                    raise KeyError(f"repair log names old table {table!r}, which is not mapped")
                keys = list(dict.fromkeys(keys))
                rows[table] = (
                    keys,
                    read_old_rows(conn, old_tables.get(table), mapping[0].old_key, keys),
                )
        with new.begin() as nconn:
            for table, (keys, old_rows) in rows.items():
                apply_old_rows(nconn, new_tables, mappings, table, keys, old_rows)
        ids = [e.id for e in entries]
        with old.begin() as conn:
            conn.execute(
                repair_log.update().where(repair_log.c.id.in_(ids)).values(replayed_at=_now())
            )
        done += len(ids)
        log.info("repair log: replayed %d entries", done)
