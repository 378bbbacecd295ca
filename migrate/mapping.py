"""How a row of the old schema becomes rows of the new one.

A `TableMapping` names one new table and the old table it is filled from; several
mappings may share an old table (a split table: `users` → `customers` +
`customer_contacts`). The same mapping drives the dual writer, the backfill and the
verifier, so what is written and what is compared can never disagree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

#: Column kinds: `same` (value unchanged), `cents` (numeric(12,2) → integer cents),
#: `text` (a blank or whitespace-only string becomes NULL).
KINDS = ("same", "cents", "text")
#: What "blank" means (docs/migration-runbook.md): only these whitespace characters.
BLANK_CHARS = " \t\n\r\f\v"

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "migration.yml"


class MappingError(ValueError):
    """A mapping file or a value that cannot go through the mapping; the message names it."""


@dataclass(frozen=True)
class ColumnMap:
    """One old column → one new column, converted by `kind`."""

    old: str
    new: str
    kind: str = "same"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MappingError(
                f"column {self.old!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}"
            )

    def convert(self, value: Any, *, table: str, key: Any) -> Any:
        """The new column's value for an old value (errors name table, row and field)."""
        if value is None:
            return None
        if self.kind == "cents":
            return to_cents(value, where=f"{table} id={key} field {self.old}")
        if self.kind == "text" and isinstance(value, str) and not value.strip(BLANK_CHARS):
            return None
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # naive timestamps of the source are UTC
        return value


def to_cents(value: Any, *, where: str) -> int:
    """Exact integer cents of a money value (Decimal, str, int or the float SQLite keeps)."""
    try:
        cents = Decimal(str(value)) * 100
    except InvalidOperation as exc:
        raise MappingError(f"{where}: {value!r} is not a number") from exc
    if cents != cents.to_integral_value():
        shown = format((cents / 100).normalize(), "f")
        raise MappingError(f"{where}: {shown} has more than 2 decimals")
    return int(cents)


@dataclass(frozen=True)
class TableMapping:
    """One new table filled from one old table, keyed by an integer key on both sides.

    `version` (optional) is a column that grows with every change of a row (the
    application's `updated_at`): writes to the new table never replace a newer version,
    so a backfill batch read before a concurrent dual write cannot undo it.
    """

    name: str
    old_table: str
    new_table: str
    old_key: str
    new_key: str
    columns: tuple[ColumnMap, ...]
    version: str | None = None

    @classmethod
    def identity(cls, table: str, columns: Sequence[str], key: str = "id") -> TableMapping:
        """Same table, same columns on both sides (a plain copy, e.g. for the benchmark)."""
        cols = tuple(ColumnMap(c, c) for c in columns if c != key)
        return cls(table, table, table, key, key, cols)

    @property
    def new_version(self) -> str | None:
        """The new-side name of the version column."""
        if self.version is None:
            return None
        for col in self.columns:
            if col.old == self.version:
                return col.new
        raise MappingError(f"{self.name}: version column {self.version!r} is not mapped")

    def to_new(self, old_row: Mapping[str, Any]) -> dict[str, Any]:
        """The new table's row for an old row (a mapping of old column names)."""
        key = old_row[self.old_key]
        row = {self.new_key: key}
        for col in self.columns:
            row[col.new] = col.convert(old_row[col.old], table=self.old_table, key=key)
        return row

    @property
    def old_columns(self) -> list[str]:
        return [self.old_key, *(c.old for c in self.columns)]

    @property
    def new_columns(self) -> list[str]:
        return [self.new_key, *(c.new for c in self.columns)]


def _column(entry: Any, where: str) -> ColumnMap:
    if isinstance(entry, str):
        return ColumnMap(entry, entry)
    if isinstance(entry, Mapping) and "old" in entry:
        return ColumnMap(
            str(entry["old"]), str(entry.get("new", entry["old"])), entry.get("kind", "same")
        )
    raise MappingError(f"{where}: a column is a name or {{old, new, kind}}, got {entry!r}")


def parse_mappings(data: Mapping[str, Any], source: str = "mapping") -> dict[str, TableMapping]:
    """Mappings from the parsed YAML document (see config/migration.yml)."""
    tables = data.get("tables") if isinstance(data, Mapping) else None
    if not isinstance(tables, Mapping) or not tables:
        raise MappingError(f"{source}: needs a non-empty `tables:` mapping")
    out: dict[str, TableMapping] = {}
    for name, spec in tables.items():
        where = f"{source}: table {name!r}"
        if not isinstance(spec, Mapping):
            raise MappingError(f"{where}: expected a mapping, got {spec!r}")
        missing = [k for k in ("old_table", "columns") if k not in spec]
        if missing:
            raise MappingError(f"{where}: missing {', '.join(missing)}")
        key = spec.get("key", "id")
        old_key = str(spec.get("old_key", key))
        new_key = str(spec.get("new_key", key))
        columns = tuple(_column(c, where) for c in spec["columns"])
        mapping = TableMapping(
            name=str(name),
            old_table=str(spec["old_table"]),
            new_table=str(spec.get("new_table", name)),
            old_key=old_key,
            new_key=new_key,
            columns=columns,
            version=spec.get("version"),
        )
        _ = mapping.new_version  # fail early on an unmapped version column
        out[mapping.name] = mapping
    return out


def load_mappings(path: str | Path | None = None) -> dict[str, TableMapping]:
    """Mappings from a version-controlled YAML file (default config/migration.yml)."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise MappingError(f"migration mapping {path} does not exist")
    return parse_mappings(yaml.safe_load(path.read_text()) or {}, str(path))


def select_mappings(
    mappings: Mapping[str, TableMapping], names: Sequence[str] | None
) -> list[TableMapping]:
    """The named mappings in file order (all when `names` is empty)."""
    if not names:
        return list(mappings.values())
    unknown = [n for n in names if n not in mappings]
    if unknown:
        raise MappingError(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(mappings)}")
    return [mappings[n] for n in names]


def mappings_of_old_table(
    mappings: Mapping[str, TableMapping], old_table: str
) -> list[TableMapping]:
    """Every new table an old table feeds (two or more for a split table)."""
    return [m for m in mappings.values() if m.old_table == old_table]
