"""Per-table extract configuration of the operational database (docs/extract-design.md).

Defaults cover the contract's four source tables (docs/contract.md); a YAML file (path from the
`EXTRACT_CONFIG` environment variable, resolved in `core.settings`) overrides them:

    tables:
      orders:
        mode: incremental        # incremental | full
        overlap_minutes: 15      # or overlap_seconds
        parallel_ranges: 4       # key ranges read at once (default: EXTRACT_PARALLELISM)
      order_items:
        reconcile_deletes: true

`parallel_ranges` left unset takes the run's default degree (`EXTRACT_PARALLELISM`,
`core.settings.extract_parallelism`); 1 reads the table in one stream.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from core import tables as source_tables

MODES = ("incremental", "full")
DEFAULT_OVERLAP = timedelta(minutes=15)  # > the contract's 10 min out-of-order commits
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYS = (
    "key",
    "cursor",
    "mode",
    "overlap_minutes",
    "overlap_seconds",
    "parallel_ranges",
    "reconcile_deletes",
    "required_columns",
)


class TableConfigError(ValueError):
    """An extract table setting is invalid; the message names it and the valid values."""


@dataclass(frozen=True)
class TableConfig:
    """How one source table is extracted."""

    name: str
    key: str = "id"
    cursor: str = "updated_at"
    mode: str = "incremental"
    overlap: timedelta = DEFAULT_OVERLAP
    parallel_ranges: int | None = None  # None: the run's default (EXTRACT_PARALLELISM)
    reconcile_deletes: bool = False
    required_columns: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        where = f"extract table {self.name!r}"
        for attr in ("name", "key", "cursor"):
            value = getattr(self, attr)
            if not isinstance(value, str) or not _IDENT.match(value):
                raise TableConfigError(
                    f"{where}: {attr}={value!r} is not a plain identifier (letters, digits, _)"
                )
        if self.mode not in MODES:
            raise TableConfigError(
                f"{where}: mode={self.mode!r} is invalid; valid: {', '.join(MODES)}"
            )
        if not isinstance(self.overlap, timedelta) or self.overlap < timedelta(0):
            raise TableConfigError(f"{where}: overlap={self.overlap!r} must be a timedelta >= 0")
        if self.parallel_ranges is not None and (
            isinstance(self.parallel_ranges, bool)
            or not isinstance(self.parallel_ranges, int)
            or self.parallel_ranges < 1
        ):
            raise TableConfigError(
                f"{where}: parallel_ranges={self.parallel_ranges!r} must be an integer >= 1"
            )
        if not isinstance(self.reconcile_deletes, bool):
            raise TableConfigError(
                f"{where}: reconcile_deletes={self.reconcile_deletes!r} must be true or false"
            )
        for column in self.required_columns:
            if not isinstance(column, str) or not _IDENT.match(column):
                raise TableConfigError(
                    f"{where}: required_columns entry {column!r} is not a plain identifier"
                )

    def degree(self, default: int = 1) -> int:
        """Key ranges to read at once: the table's own `parallel_ranges`, else `default`."""
        return self.parallel_ranges if self.parallel_ranges is not None else default


DEFAULT_TABLES: tuple[TableConfig, ...] = tuple(
    TableConfig(
        t.name,
        key=t.key[0],
        cursor=t.cursor,
        reconcile_deletes=t.hard_deletes,
        required_columns=t.required,
    )
    for t in source_tables.of_source(source_tables.SOURCE_DB)
)


def _overlap(name: str, raw: Mapping[str, Any]) -> timedelta | None:
    if "overlap_minutes" in raw and "overlap_seconds" in raw:
        raise TableConfigError(
            f"extract table {name!r}: give overlap_minutes or overlap_seconds, not both"
        )
    for unit in ("minutes", "seconds"):
        key = f"overlap_{unit}"
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise TableConfigError(
                    f"extract table {name!r}: {key}={value!r} must be a number >= 0"
                )
            return timedelta(**{unit: value})
    return None


def apply_overrides(
    overrides: Mapping[str, Any], defaults: tuple[TableConfig, ...] = DEFAULT_TABLES
) -> tuple[TableConfig, ...]:
    """Defaults with `{"tables": {name: {setting: value}}}` applied (unknown keys are errors)."""
    if not isinstance(overrides, Mapping):
        raise TableConfigError("extract config: the top level must be a mapping with 'tables'")
    unknown_top = sorted(set(overrides) - {"tables"})
    if unknown_top:
        raise TableConfigError(
            f"extract config: unknown key(s) {', '.join(map(str, unknown_top))}; valid: tables"
        )
    tables = overrides.get("tables") or {}
    if not isinstance(tables, Mapping):
        raise TableConfigError(
            "extract config: 'tables' must be a mapping of table name → settings"
        )
    by_name = {c.name: c for c in defaults}
    for name, raw in tables.items():
        if name not in by_name:
            raise TableConfigError(
                f"extract config: unknown table {name!r}; valid: {', '.join(by_name)}"
            )
        raw = raw or {}
        if not isinstance(raw, Mapping):
            raise TableConfigError(f"extract table {name!r}: settings must be a mapping")
        bad = sorted(set(raw) - set(_KEYS))
        if bad:
            raise TableConfigError(
                f"extract table {name!r}: unknown setting(s) {', '.join(map(str, bad))}; "
                f"valid: {', '.join(_KEYS)}"
            )
        changes: dict[str, Any] = {
            k: raw[k]
            for k in ("key", "cursor", "mode", "parallel_ranges", "reconcile_deletes")
            if k in raw
        }
        overlap = _overlap(name, raw)
        if overlap is not None:
            changes["overlap"] = overlap
        if "required_columns" in raw:
            cols = raw["required_columns"]
            if not isinstance(cols, list | tuple):
                raise TableConfigError(
                    f"extract table {name!r}: required_columns must be a list of column names"
                )
            changes["required_columns"] = tuple(cols)
        by_name[name] = replace(by_name[name], **changes)
    return tuple(by_name.values())


def load_table_configs(path: Path | None) -> tuple[TableConfig, ...]:
    """The table configs: defaults, overridden by the YAML file at `path` when given."""
    if path is None:
        return DEFAULT_TABLES
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TableConfigError(f"EXTRACT_CONFIG: file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TableConfigError(f"EXTRACT_CONFIG: {path} is not valid YAML: {exc}") from exc
    return apply_overrides(data)
