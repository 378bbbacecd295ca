"""The warehouse interface the pipeline steps use, and the errors every backend shares.

One `Warehouse` per backend module (`duckdb.py`, `postgres.py`; Snowflake and BigQuery
are planned in docs/warehouse-backends.md). A run works on a `Build`: a private copy of
the published warehouse (a file for DuckDB, private schemas on a server) that only
`publish` makes visible, atomically, and `abandon_build` drops.

SQL given to `execute` / `read_arrow` names schemas as `{raw}`, `{ops}`, `{analytics}`
(any of `PUBLISHED_SCHEMAS`): the backend puts the quoted schema of the build in their
place (or the published schema when no build is given). Values are always bound
parameters, written `?` on every backend (turned into `%s` for psycopg).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
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
    "Session",
    "quote_ident",
    "substitute_schemas",
]


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier (embedded quotes doubled); never empty."""
    if not name or "\x00" in name:
        raise WarehouseError(f"invalid identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def qmark_to_format(sql: str) -> str:
    """`?` placeholders (outside quotes) → `%s`, every `%` doubled (psycopg's format)."""
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        out.append("%%" if ch == "%" else ch)
    return "".join(out)


def parquet_files(directories: Sequence[Path]) -> list[Path]:
    """Every `*.parquet` of the directories, in name order per directory."""
    return [f for d in directories for f in sorted(Path(d).glob("*.parquet"))]


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
class Session(Protocol):
    """One open transaction on a build (`Warehouse.transaction`): what the loader needs to
    do a whole load atomically on any backend.

    SQL uses `?` for bound values on every backend (the session converts it to its
    driver's paramstyle) and `{raw}`, `{ops}`, ... for schemas (`substitute_schemas`).
    Temporary relations live until the transaction ends (or the connection closes)."""

    kind: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement (several without params); rows affected (0 for DDL)."""
        ...

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None: ...

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...

    def table(self, schema: str, table: str) -> str:
        """The quoted name of a (build's) table, e.g. `"raw"."orders"`."""
        ...

    def exists(self, schema: str, table: str) -> bool: ...

    def table_columns(self, relation: str) -> dict[str, pa.DataType]:
        """Columns of a relation (a quoted name from `table`, or a temporary one) with
        their Arrow types, in order."""
        ...

    def column_type(self, type_: pa.DataType) -> str:
        """The engine's column type for an Arrow type."""
        ...

    def add_column(self, relation: str, name: str, type_: pa.DataType) -> None:
        """`ALTER TABLE … ADD COLUMN` with the engine's type for an Arrow type."""
        ...

    def widen_column(self, relation: str, name: str, type_: pa.DataType) -> None:
        """`ALTER TABLE … ALTER COLUMN … TYPE` the engine's type for an Arrow type."""
        ...

    def stage_parquet(
        self, name: str, directories: Sequence[Path], *, union_by_name: bool = True
    ) -> list[str]:
        """A temporary relation `name` with the rows of every `*.parquet` of the
        directories (columns matched by name, missing ones NULL); its column names."""
        ...

    def create_temp(
        self, name: str, select_sql: str, params: Sequence[Any] = (), *, columns: str = ""
    ) -> None:
        """Temporary table `name` (replaced if it exists) from a query, or, with
        `columns` (e.g. `order_id bigint, reason varchar`), empty with those columns."""
        ...

    def dedupe(
        self,
        name: str,
        source: str,
        columns: Sequence[str],
        keys: Sequence[str],
        cursor: str | None,
    ) -> None:
        """Temporary table `name`: one row of `source` per key, the greatest `cursor`
        (NULLs last) winning."""
        ...

    def days_interval(self, expr: str) -> str:
        """SQL for an interval of `expr` (an integer expression) days."""
        ...

    def read_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """A query's rows as Arrow, inside the session's transaction."""
        ...

    def insert_arrow(self, relation: str, data: pa.Table) -> int:
        """Append an Arrow table's rows to a relation, columns matched by name, the
        engine's bulk way (DuckDB: a registered Arrow scan; PostgreSQL: COPY); rows."""
        ...


class SessionColumns:
    """The column operations of a warehouse, each one transaction of its own session
    (`transaction` is the backend's; the session does the engine's work)."""

    def table_columns(self, build: Build, schema: str, table: str) -> dict[str, pa.DataType]:
        with self.transaction(build) as s:
            return s.table_columns(s.table(schema, table)) if s.exists(schema, table) else {}

    def add_column(
        self, build: Build, schema: str, table: str, name: str, type_: pa.DataType
    ) -> None:
        with self.transaction(build) as s:
            s.add_column(s.table(schema, table), name, type_)

    def widen_column(
        self, build: Build, schema: str, table: str, name: str, type_: pa.DataType
    ) -> None:
        with self.transaction(build) as s:
            s.widen_column(s.table(schema, table), name, type_)


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

    def transaction(self, build: Build | None = None) -> AbstractContextManager[Session]:
        """One transaction on the build, or on the published warehouse when `build` is
        None: committed when the block ends, rolled back on an exception."""
        ...

    def table_columns(self, build: Build, schema: str, table: str) -> dict[str, pa.DataType]:
        """Columns of a build table with their Arrow types ({} when it does not exist)."""
        ...

    def add_column(
        self, build: Build, schema: str, table: str, name: str, type_: pa.DataType
    ) -> None: ...

    def widen_column(
        self, build: Build, schema: str, table: str, name: str, type_: pa.DataType
    ) -> None: ...

    def begin_build(self, run_id: str) -> Build:
        """A private copy of the published warehouse for run `run_id` (an earlier attempt
        of the same run is dropped first)."""
        ...

    def open_build(self, run_id: str) -> Build | None:
        """The build `begin_build(run_id)` made (the later tasks of a run run in other
        processes), or None when there is none."""
        ...

    def publish(
        self,
        build: Build,
        *,
        check_lease: Callable[[], None] | None = None,
        version: str | None = None,
        keep: int = 0,
    ) -> float:
        """Make the build the published warehouse atomically; the swap's seconds.
        PublishConflictError when another publish happened since the build began.
        `version`/`keep`: a backend that keeps published versions for rollback (DuckDB)
        keeps this one and prunes to the newest `keep`; the others ignore them."""
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
