"""The warehouse interface the pipeline steps use, and the errors every backend shares.

One `Warehouse` per backend module (`duckdb.py`, `postgres.py`; Snowflake and BigQuery
are planned in docs/warehouse-backends.md). A run works on a `Build`: a private copy of
the published warehouse (a file for DuckDB, private schemas on a server) that only
`publish` makes visible, atomically, and `abandon_build` drops.

SQL given to `execute` / `read_arrow` names schemas as `{raw}`, `{ops}`, `{analytics}`
(any of `PUBLISHED_SCHEMAS`): the backend puts the quoted schema of the build in their
place (or the published schema when no build is given). Values are always bound
parameters (`%s` on PostgreSQL, `?` on DuckDB: the backend's `paramstyle`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from warehouse.publish import PublishConflictError

# Every schema the nightly publishes (dbt's +schema settings plus raw and ops).
PUBLISHED_SCHEMAS: tuple[str, ...] = (
    "raw",
    "ops",
    "staging",
    "intermediate",
    "marts",
    "analytics",
    "snapshots",
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class WarehouseError(RuntimeError):
    """A warehouse operation failed; the message names the backend and the object."""


class BuildNotFoundError(WarehouseError):
    """The build to publish or use is gone (abandoned, or dropped by a newer attempt)."""


class PublishBlockedError(WarehouseError):
    """Publish could not get its locks in time (a reader held a published table open)."""


__all__ = [
    "PUBLISHED_SCHEMAS",
    "Build",
    "BuildNotFoundError",
    "MergeResult",
    "PublishBlockedError",
    "PublishConflictError",
    "Warehouse",
    "WarehouseError",
    "quote_ident",
    "substitute_schemas",
]


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier (embedded quotes doubled); never empty."""
    if not name or "\x00" in name:
        raise WarehouseError(f"invalid identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def check_schema_name(name: str) -> str:
    if not _IDENT.match(name):
        raise WarehouseError(f"invalid schema name {name!r}")
    return name


def substitute_schemas(sql: str, mapping: dict[str, str]) -> str:
    """Replace `{schema}` placeholders of known schemas with the quoted actual schema;
    other braces are left alone."""
    if not mapping:
        return sql
    pattern = re.compile(r"\{(" + "|".join(re.escape(k) for k in mapping) + r")\}")
    return pattern.sub(lambda m: quote_ident(mapping[m.group(1)]), sql)


@dataclass(frozen=True)
class MergeResult:
    """Rows a merge by key changed: `updated` replaced an existing key, `inserted` did not."""

    inserted: int
    updated: int

    @property
    def rows(self) -> int:
        return self.inserted + self.updated


@dataclass
class Build:
    """A run's private copy of the warehouse.

    `schemas` maps each published schema to the build's schema (DuckDB: the same names,
    inside the build file `path`). `base` is what was published when the build began;
    publish refuses (PublishConflictError) when the published state is no longer it."""

    backend: str
    run_id: str
    token: str
    base: Any
    schemas: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def schema(self, published: str) -> str:
        try:
            return self.schemas[published]
        except KeyError:
            raise WarehouseError(
                f"schema {published!r} is not one the build publishes ({', '.join(self.schemas)})"
            ) from None

    def table(self, schema: str, table: str) -> str:
        """The quoted `schema.table` of the build's copy of a published table."""
        return f"{quote_ident(self.schema(schema))}.{quote_ident(table)}"


@runtime_checkable
class Warehouse(Protocol):
    """What the pipeline needs from a warehouse (dlt destination / Dagster resource
    style: one object, configured once, passed to the steps)."""

    kind: str  # "duckdb", "postgres", ... (= the dbt target it pairs with)
    paramstyle: str  # "qmark" (?) or "format" (%s)

    def read_arrow(
        self, sql: str, params: Sequence[Any] = (), *, build: Build | None = None
    ) -> pa.Table:
        """Run a query (published state, or the build's) and return Arrow."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = (), *, build: Build | None = None) -> int:
        """Run one bookkeeping statement (`ops.*`) with bound params; rows affected."""
        ...

    def load_parquet(
        self, build: Build, schema: str, table: str, files: Sequence[Path], *, replace: bool = False
    ) -> int:
        """Bulk-load Parquet files into a build table (created from the files' schema when
        missing; emptied first when `replace`), the engine's own fast way; rows loaded."""
        ...

    def merge_parquet(
        self,
        build: Build,
        schema: str,
        table: str,
        files: Sequence[Path],
        keys: Sequence[str],
        *,
        cursor: str | None = None,
    ) -> MergeResult:
        """Upsert the files' rows into a build table by `keys`, in one transaction (rows
        of one key in the files: the greatest `cursor` wins)."""
        ...

    def delete_keys(self, build: Build, schema: str, table: str, keys: pa.Table) -> int:
        """Delete the build table's rows whose key (the columns of `keys`) is in `keys`."""
        ...

    def begin_build(self, run_id: str) -> Build:
        """A private copy of the published warehouse for run `run_id` (an earlier attempt
        of the same run is dropped first)."""
        ...

    def publish(self, build: Build, *, check_lease: Callable[[], None] | None = None) -> float:
        """Make the build the published warehouse atomically; the swap's seconds.
        PublishConflictError when another publish happened since the build began."""
        ...

    def abandon_build(self, build: Build) -> None:
        """Drop the build; the published warehouse is untouched."""
        ...

    def lease_backend(self) -> Any:
        """The `warehouse.lease.LeaseBackend` that keeps one run at a time."""
        ...

    def describe(self) -> str:
        """Where the warehouse is, for logs (never a password)."""
        ...
