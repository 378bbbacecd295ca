"""DuckDB warehouse (the default): today's file-based build and publish behind the interface.

A build is a copy of the warehouse file (`warehouse.publish.begin_build`), published by
one `rename` (`publish_build`); schemas keep their names inside the build file. Loads
use DuckDB's own `read_parquet`. The lease is the file lease next to the warehouse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from warehouse import publish as file_publish
from warehouse.backends.base import (
    PUBLISHED_SCHEMAS,
    Build,
    MergeResult,
    SessionColumns,
    WarehouseError,
    quote_ident,
    substitute_schemas,
)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _file_list(directories: Sequence[Path]) -> str:
    """`['<dir>/*.parquet', ...]` as a SQL list literal (views take no bound params)."""
    return "[" + ", ".join(_literal(str(Path(d) / "*.parquet")) for d in directories) + "]"


class _Configured(Enum):
    LIMIT = "configured"


#: `connect`'s default memory limit: `NIGHTSHIFT_DUCKDB_MEMORY_LIMIT`, read at connect time.
CONFIGURED = _Configured.LIMIT

#: WAL size past which a commit checkpoints a writable file (DuckDB's default is 16MB).
#: Until a checkpoint, committed changes stay in memory under the memory limit; a
#: process that commits one step after another (dbt building model after model on one
#: connection) then runs out of it: at 5M orders with a 128MB limit the nightly dbt build
#: failed with 16MB and passed with 1MB (docs/benchmarks.md). dbt_project/profiles.yml
#: sets the same value.
CHECKPOINT_THRESHOLD = "1MB"


def connect(
    path: Path | str | None = None,
    *,
    read_only: bool = False,
    memory_limit: str | None | _Configured = CONFIGURED,
    threads: int | None = None,
    preserve_insertion_order: bool = True,
) -> duckdb.DuckDBPyConnection:
    """The one way the project opens DuckDB: the warehouse file, a build of it, or (path
    None) an in-memory database, with the warehouse's settings.

    - `memory_limit`: the configured `NIGHTSHIFT_DUCKDB_MEMORY_LIMIT` unless given (a
      size such as "256MB"; None: DuckDB's own default, 80% of RAM). DuckDB spills past it.
    - TimeZone UTC: timestamps read and cast the same on every host.
    - `threads` (None: DuckDB's default, one per core) and `preserve_insertion_order`
      (False lets large scans stream without keeping their order).
    - An in-memory database spills under `DATA_DIR/tmp/duckdb` (DuckDB's default is
      `.tmp` in whatever the working directory is); a file spills beside itself.
    - A writable file checkpoints once its WAL passes `CHECKPOINT_THRESHOLD`.

    The settings are SETs, not connect-time config: a file already open in this process
    with another config would refuse a second connection. A failed SET closes the
    connection."""
    if memory_limit is CONFIGURED:
        from core import settings

        memory_limit = settings.duckdb_memory_limit()
    con = duckdb.connect(":memory:" if path is None else str(path), read_only=read_only)
    try:
        if memory_limit:
            con.execute(f"set memory_limit = {_literal(memory_limit)}")
        if threads is not None:
            con.execute(f"set threads = {int(threads)}")
        if not preserve_insertion_order:
            con.execute("set preserve_insertion_order = false")
        con.execute("set TimeZone = 'UTC'")
        if path is not None and not read_only:
            con.execute(f"set checkpoint_threshold = {_literal(CHECKPOINT_THRESHOLD)}")
        if path is None:
            from core import settings

            spill = settings.data_dir() / "tmp" / "duckdb"
            try:
                spill.mkdir(parents=True, exist_ok=True)  # DuckDB makes only the last level
            except OSError:
                pass  # a data folder this process cannot write: DuckDB's default
            else:
                con.execute(f"set temp_directory = {_literal(str(spill))}")
    except BaseException:
        con.close()
        raise
    return con


def arrow_to_duckdb(type_: pa.DataType) -> str:
    """DuckDB's own column type for an Arrow type (what `read_parquet` would give)."""
    con = connect(memory_limit=None)  # describes an empty table: reads no data
    try:
        con.register("_t", pa.table({"c": pa.array([], type=type_)}))
        return str(con.execute("describe _t").fetchone()[1])
    finally:
        con.close()


class DuckDBSession:
    """`base.Session` over an open DuckDB connection (the caller owns the transaction)."""

    kind = "duckdb"

    def __init__(self, con: duckdb.DuckDBPyConnection, schemas: dict[str, str] | None = None):
        self.con = con
        self.schemas = schemas if schemas is not None else {s: s for s in PUBLISHED_SCHEMAS}

    def _sql(self, sql: str) -> str:
        return substitute_schemas(sql, self.schemas)

    def _run(self, sql: str, params: Sequence[Any]) -> duckdb.DuckDBPyConnection:
        if params:
            return self.con.execute(self._sql(sql), list(params))
        return self.con.execute(self._sql(sql))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        rows = self.fetchall(sql, params)
        return int(rows[0][0]) if rows and rows[0] and isinstance(rows[0][0], int) else 0

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = self.fetchall(sql, params)  # every result is read to its end
        return rows[0] if rows else None

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        result = self._run(sql, params)
        try:
            return result.fetchall()
        except duckdb.InvalidInputError:  # a statement without a result
            return []

    def table(self, schema: str, table: str) -> str:
        return f"{quote_ident(self.schemas.get(schema, schema))}.{quote_ident(table)}"

    def exists(self, schema: str, table: str) -> bool:
        row = self.fetchone(
            "select count(*) from information_schema.tables "
            "where table_schema = ? and table_name = ?",
            [self.schemas.get(schema, schema), table],
        )
        return bool(row and row[0])

    def table_columns(self, relation: str) -> dict[str, pa.DataType]:
        schema = (
            self.con.sql(self._sql(f"select * from {relation} limit 0")).to_arrow_table().schema
        )
        return {f.name: f.type for f in schema}

    def native_columns(self, relation: str) -> dict[str, str]:
        return {r[0]: r[1] for r in self.fetchall(f"describe {relation}")}

    def column_type(self, type_: pa.DataType) -> str:
        return arrow_to_duckdb(type_)

    def add_column(self, relation: str, name: str, type_: pa.DataType | str) -> None:
        native = type_ if isinstance(type_, str) else arrow_to_duckdb(type_)
        self.execute(f"alter table {relation} add column {quote_ident(name)} {native}")

    def widen_column(self, relation: str, name: str, type_: pa.DataType | str) -> None:
        native = type_ if isinstance(type_, str) else arrow_to_duckdb(type_)
        self.execute(f"alter table {relation} alter column {quote_ident(name)} type {native}")

    def stage_parquet(
        self, name: str, directories: Sequence[Path], *, union_by_name: bool = True
    ) -> list[str]:
        options = "union_by_name = true, " if union_by_name else ""
        self.execute(
            f"create or replace temp view {quote_ident(name)} as select * from "
            f"read_parquet({_file_list(directories)}, {options}hive_partitioning = false)"
        )
        return list(self.native_columns(quote_ident(name)))

    def create_temp(
        self, name: str, select_sql: str, params: Sequence[Any] = (), *, columns: str = ""
    ) -> None:
        if columns:
            self.execute(f"create or replace temp table {quote_ident(name)} ({columns})")
        else:
            self.execute(
                f"create or replace temp table {quote_ident(name)} as {select_sql}", params
            )

    def dedupe(
        self,
        name: str,
        source: str,
        columns: Sequence[str],
        keys: Sequence[str],
        cursor: str | None,
    ) -> None:
        key_cols = ", ".join(quote_ident(k) for k in keys)
        order = f"{quote_ident(cursor)} desc nulls last" if cursor else "1"
        self.execute(
            f"create or replace temp table {quote_ident(name)} as select * from {source} "
            f"qualify row_number() over (partition by {key_cols} order by {order}) = 1"
        )

    def days_interval(self, expr: str) -> str:
        return f"to_days({expr})"

    def read_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        return self.con.sql(self._sql(sql), params=list(params) or None).to_arrow_table()

    def insert_arrow(self, relation: str, data: pa.Table) -> int:
        name = f"_arrow_{id(data):x}"
        self.con.register(name, data)
        try:
            row = self.con.execute(
                f"insert into {relation} by name select * from {quote_ident(name)}"
            ).fetchone()
        finally:
            self.con.unregister(name)
        return int(row[0]) if row else 0


def as_session(con: Any) -> Any:
    """A `Session` for a session, or for a bare DuckDB connection (published names)."""
    if isinstance(con, duckdb.DuckDBPyConnection):
        return DuckDBSession(con)
    return con


class DuckDBWarehouse(SessionColumns):
    kind = "duckdb"
    paramstyle = "qmark"

    def __init__(
        self,
        path: Path,
        *,
        schemas: Sequence[str] = PUBLISHED_SCHEMAS,
        memory_limit: str | None = None,
    ) -> None:
        """`memory_limit` (e.g. "512MB", `NIGHTSHIFT_DUCKDB_MEMORY_LIMIT`): DuckDB's
        `memory_limit` in every connection opened here and in dbt's (DuckDB spills past
        it); None: DuckDB's default, 80% of RAM."""
        self.path = Path(path)
        self.schemas = tuple(schemas)
        self.memory_limit = memory_limit

    def connect(
        self, build: Build | None = None, *, read_only: bool = False
    ) -> duckdb.DuckDBPyConnection:
        """The one place this backend opens the published file (or `build`'s): under this
        warehouse's memory limit, TimeZone UTC (`connect`); the caller closes it."""
        return connect(self._file(build), read_only=read_only, memory_limit=self.memory_limit)

    def describe(self) -> str:
        return f"duckdb warehouse {self.path}"

    def _file(self, build: Build | None) -> Path:
        if build is None:
            return self.path
        if build.path is None:
            raise WarehouseError(f"build {build.token} has no file")
        return build.path

    def _mapping(self) -> dict[str, str]:
        return {s: s for s in self.schemas}

    def read_arrow(
        self, sql: str, params: Sequence[Any] = (), *, build: Build | None = None
    ) -> pa.Table:
        con = self.connect(build, read_only=True)
        try:
            query = substitute_schemas(sql, self._mapping())
            return con.sql(query, params=list(params) or None).to_arrow_table()
        finally:
            con.close()

    def execute(self, sql: str, params: Sequence[Any] = (), *, build: Build | None = None) -> int:
        con = self.connect(build)
        try:
            row = con.execute(substitute_schemas(sql, self._mapping()), list(params)).fetchone()
            return int(row[0]) if row and isinstance(row[0], int) else 0
        finally:
            con.close()

    @contextmanager
    def transaction(self, build: Build | None = None) -> Iterator[DuckDBSession]:
        path = self._file(build)
        path.parent.mkdir(parents=True, exist_ok=True)
        con = self.connect(build)
        try:
            con.execute("begin transaction")
            try:
                if build is not None:  # a build has every published schema, as on a server
                    for s in self.schemas:
                        con.execute(f"create schema if not exists {quote_ident(s)}")
                yield DuckDBSession(con, self._mapping())
                con.execute("commit")
            except BaseException:
                con.execute("rollback")
                raise
        finally:
            con.close()

    def _ensure(
        self,
        con: duckdb.DuckDBPyConnection,
        build: Build,
        schema: str,
        table: str,
        files: list[str],
    ) -> str:
        target = build.table(schema, table)
        con.execute(f"create schema if not exists {quote_ident(schema)}")
        con.execute(
            f"create table if not exists {target} as select * from read_parquet(?) limit 0",
            [files],
        )
        return target

    def load_parquet(
        self, build: Build, schema: str, table: str, files: Sequence[Path], *, replace: bool = False
    ) -> int:
        names = [str(f) for f in files]
        con = self.connect(build)
        try:
            con.execute("begin transaction")
            target = self._ensure(con, build, schema, table, names)
            if replace:
                con.execute(f"delete from {target}")
            row = con.execute(
                f"insert into {target} by name select * from read_parquet(?)", [names]
            ).fetchone()
            con.execute("commit")
            return int(row[0]) if row else 0
        finally:
            con.close()

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
        names = [str(f) for f in files]
        key_cols = ", ".join(quote_ident(k) for k in keys)
        match = " and ".join(f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in keys)
        order = f" order by {quote_ident(cursor)} desc nulls last" if cursor else ""
        con = self.connect(build)
        try:
            con.execute("begin transaction")
            target = self._ensure(con, build, schema, table, names)
            con.execute(
                "create temp table _latest as select * from read_parquet(?) "
                f"qualify row_number() over (partition by {key_cols}{order}) = 1",
                [names],
            )
            updated = con.execute(
                f"select count(*) from {target} t where exists "
                f"(select 1 from _latest s where {match})"
            ).fetchone()[0]
            con.execute(
                f"delete from {target} t where exists (select 1 from _latest s where {match})"
            )
            total = con.execute(f"insert into {target} by name select * from _latest").fetchone()[0]
            con.execute("drop table _latest")
            con.execute("commit")
        finally:
            con.close()
        return MergeResult(inserted=int(total) - int(updated), updated=int(updated))

    def delete_keys(self, build: Build, schema: str, table: str, keys: pa.Table) -> int:
        target = build.table(schema, table)
        match = " and ".join(f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in keys.column_names)
        con = self.connect(build)
        try:
            con.register("_keys", keys)
            row = con.execute(
                f"delete from {target} t where exists (select 1 from _keys s where {match})"
            ).fetchone()
            return int(row[0]) if row else 0
        finally:
            con.close()

    def begin_build(self, run_id: str) -> Build:
        path = file_publish.begin_build(self.path, run_id)
        base = file_publish.published_identity(self.path)
        return Build(
            backend=self.kind,
            run_id=run_id,
            token=path.name,
            base=base,
            schemas={s: s for s in self.schemas},
            path=path,
        )

    def open_build(self, run_id: str) -> Build | None:
        path = file_publish.build_path_for(self.path, run_id)
        # the first build of an empty warehouse has no file yet, only its recorded base
        if not path.exists() and not path.with_name(path.name + ".base").exists():
            return None
        return Build(
            backend=self.kind,
            run_id=run_id,
            token=path.name,
            base=None,  # recorded next to the build file (<build>.base), checked by publish
            schemas={s: s for s in self.schemas},
            path=path,
        )

    def publish(
        self,
        build: Build,
        *,
        check_lease: Callable[[], None] | None = None,
        version: str | None = None,
        keep: int = 0,
    ) -> float:
        # publish_build checks the file lease and the recorded base under its own lock.
        if check_lease is not None:
            check_lease()
        return file_publish.publish_build(self._file(build), self.path, version=version, keep=keep)

    def abandon_build(self, build: Build) -> None:
        file_publish.abandon_build(self._file(build))

    def lease_backend(self) -> Any:
        from warehouse.lease import FileLease

        return FileLease(self.path)
