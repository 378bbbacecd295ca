"""DuckDB warehouse (the default): today's file-based build and publish behind the interface.

A build is a copy of the warehouse file (`warehouse.publish.begin_build`), published by
one `rename` (`publish_build`); schemas keep their names inside the build file. Loads
use DuckDB's own `read_parquet`. The lease is the file lease next to the warehouse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from warehouse import publish as file_publish
from warehouse.backends.base import (
    PUBLISHED_SCHEMAS,
    Build,
    MergeResult,
    WarehouseError,
    quote_ident,
    substitute_schemas,
)


class DuckDBWarehouse:
    kind = "duckdb"
    paramstyle = "qmark"

    def __init__(self, path: Path, *, schemas: Sequence[str] = PUBLISHED_SCHEMAS) -> None:
        self.path = Path(path)
        self.schemas = tuple(schemas)

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
        con = duckdb.connect(str(self._file(build)), read_only=True)
        try:
            con.execute("set TimeZone = 'UTC'")
            query = substitute_schemas(sql, self._mapping())
            return con.sql(query, params=list(params) or None).to_arrow_table()
        finally:
            con.close()

    def execute(self, sql: str, params: Sequence[Any] = (), *, build: Build | None = None) -> int:
        con = duckdb.connect(str(self._file(build)))
        try:
            con.execute("set TimeZone = 'UTC'")
            row = con.execute(substitute_schemas(sql, self._mapping()), list(params)).fetchone()
            return int(row[0]) if row and isinstance(row[0], int) else 0
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
        con = duckdb.connect(str(self._file(build)))
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
        con = duckdb.connect(str(self._file(build)))
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
        con = duckdb.connect(str(self._file(build)))
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

    def publish(self, build: Build, *, check_lease: Callable[[], None] | None = None) -> float:
        # publish_build checks the file lease and the recorded base under its own lock.
        if check_lease is not None:
            check_lease()
        return file_publish.publish_build(self._file(build), self.path)

    def abandon_build(self, build: Build) -> None:
        file_publish.abandon_build(self._file(build))

    def lease_backend(self) -> Any:
        from warehouse.lease import FileLease

        return FileLease(self.path)
