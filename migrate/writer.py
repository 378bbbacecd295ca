"""Writes to the new database through a mapping: idempotent upserts and deletes.

Shared by the dual writer, the repair-log replay and the backfill, so every path
writes a row the same way. An upsert never replaces a newer version of a row (the
mapping's `version` column), so writers racing each other converge on the newest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from migrate.db import exact_columns, reflect_table, require_columns
from migrate.mapping import TableMapping, mappings_of_old_table


class Tables:
    """Reflected tables of one database, looked up once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._tables: dict[str, sa.Table] = {}

    def get(self, name: str, columns: Sequence[str] = ()) -> sa.Table:
        if name not in self._tables:
            table = reflect_table(self.engine, name)
            require_columns(table, list(columns), self.engine)
            self._tables[name] = table
        return self._tables[name]


def upsert(conn: Connection, table: sa.Table, mapping: TableMapping, rows: list[dict]) -> None:
    """INSERT … ON CONFLICT (key) DO UPDATE, unless the stored version is newer."""
    if not rows:
        return
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table)
    updates = {c: stmt.excluded[c] for c in rows[0] if c != mapping.new_key}
    version = mapping.new_version
    where = table.c[version] <= stmt.excluded[version] if version else None
    stmt = stmt.on_conflict_do_update(index_elements=[mapping.new_key], set_=updates, where=where)
    conn.execute(stmt, rows)


def delete(conn: Connection, table: sa.Table, mapping: TableMapping, keys: Iterable[Any]) -> None:
    keys = list(keys)
    if keys:
        conn.execute(table.delete().where(table.c[mapping.new_key].in_(keys)))


def read_old_rows(
    conn: Connection, table: sa.Table, key: str, keys: Sequence[Any]
) -> dict[Any, dict[str, Any]]:
    """Current old rows by key (absent keys: deleted in old)."""
    if not keys:
        return {}
    result = conn.execute(sa.select(*exact_columns(table)).where(table.c[key].in_(list(keys))))
    return {row._mapping[key]: dict(row._mapping) for row in result}


def apply_old_rows(
    conn: Connection,
    new_tables: Tables,
    mappings: Mapping[str, TableMapping],
    old_table: str,
    keys: Sequence[Any],
    old_rows: Mapping[Any, Mapping[str, Any]],
) -> None:
    """Make the new tables fed by `old_table` match the old rows for `keys`:
    upsert the rows that exist, delete those the old side no longer has."""
    for mapping in mappings_of_old_table(mappings, old_table):
        table = new_tables.get(mapping.new_table, mapping.new_columns)
        present = [mapping.to_new(old_rows[k]) for k in keys if k in old_rows]
        upsert(conn, table, mapping, present)
        delete(conn, table, mapping, [k for k in keys if k not in old_rows])
