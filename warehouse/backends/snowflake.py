"""Snowflake warehouse: PUT + COPY INTO loads, MERGE by key, builds as zero-copy clones,
publish by `ALTER SCHEMA … SWAP WITH`.

Needs `snowflake-connector-python`, which the main `.venv` does not have (it lives in
`.venv-adapters`, next to dbt-snowflake and fakesnow): the connector is imported inside
the functions that connect, so importing this module never needs it.

Identifiers: Snowflake folds unquoted names to upper case, and dbt-snowflake creates its
schemas and tables unquoted, so the published schema `raw` is the physical schema `RAW`,
a table `orders` is `ORDERS` and a Parquet column `total` is `TOTAL`; a name that is not
a plain identifier (`order-ref`) keeps its case, quoted. `read_arrow` returns upper-case
result columns in lower case, as the other backends name them.

Two ways through some steps, chosen by `emulator`:

- `emulator=None` (real Snowflake, the default): the statements below, in the docstring
  of each method (`_REAL_STATEMENTS` lists the ones fakesnow rejects).
- `emulator="fakesnow"`: fakesnow (0.12.1, on DuckDB) has no schema CLONE and no
  SWAP WITH (schemas, tables or databases) and cannot rename a schema; its builds copy
  every table with `CREATE TABLE … CLONE` (a real statement too) and its publish replaces
  each published table with `DROP TABLE` + `CREATE TABLE … CLONE` of the build's. That
  publish is NOT atomic and exists only for the emulated test; the methods
  `_begin_build_emulated` / `_publish_emulated` are its whole difference.
"""

from __future__ import annotations

import logging
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.backends.base import (
    PUBLISHED_SCHEMAS,
    Build,
    BuildNotFoundError,
    MergeResult,
    PublishConflictError,
    WarehouseError,
    check_schema_name,
    quote_ident,
    substitute_schemas,
)

log = logging.getLogger(__name__)

CONTROL_SCHEMA = "NIGHTSHIFT_CONTROL"
INSTALL_HINT = (
    "the snowflake warehouse needs snowflake-connector-python, which .venv cannot hold "
    "next to Airflow's pins: run it from .venv-adapters (make adapters-venv; "
    "requirements-adapters.txt)"
)
EMULATORS = (None, "fakesnow")
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_TOKEN_RE = re.compile(r"[^A-Z0-9]+")

# The real statements the emulated test cannot run on fakesnow (checked by
# tests/warehouse/snowflake_emulated.py: it runs each and expects fakesnow to refuse it,
# so a fakesnow release that supports one makes the test say so).
_REAL_STATEMENTS = {
    "schema_clone": "CREATE SCHEMA <s>__BUILD_<token> CLONE <s>",
    "schema_swap": "ALTER SCHEMA <s>__BUILD_<token> SWAP WITH <s>",
    "database_swap": "ALTER DATABASE <db>__BUILD_<token> SWAP WITH <db>",
}


def ident(name: str) -> str:
    """The quoted Snowflake identifier of `name`: plain names upper-cased (what an
    unquoted name resolves to), others kept as they are."""
    return quote_ident(name.upper() if _PLAIN.match(name) else name)


def _arrow_to_snowflake(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "NUMBER(38,0)"
    if pa.types.is_floating(t):
        return "FLOAT"
    if pa.types.is_decimal(t):
        return f"NUMBER({t.precision},{t.scale})"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "VARCHAR"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP_TZ" if t.tz else "TIMESTAMP_NTZ"
    raise WarehouseError(f"no Snowflake column type for Arrow type {t}")


def connect_kwargs(url: str) -> dict[str, Any]:
    """snowflake.connector.connect(**kwargs) from `snowflake://user:password@<account or
    host[:port]>/<database>[/<schema>]?account=…&warehouse=…&role=…&protocol=…`.

    The host is the account (`<account>.snowflakecomputing.com`) unless `account=` is
    given, then it is a host (fakesnow: `127.0.0.1:<port>?account=fakesnow&protocol=http`)."""
    parts = urlsplit(url)
    if parts.scheme != "snowflake":
        raise WarehouseError(f"not a snowflake:// URL: {parts.scheme}://…")
    query = dict(parse_qsl(parts.query))
    kwargs: dict[str, Any] = {
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
    }
    path = [unquote(p) for p in parts.path.split("/") if p]
    if path:
        kwargs["database"] = path[0]
    if len(path) > 1:
        kwargs["schema"] = path[1]
    if "account" in query:
        kwargs["account"] = query.pop("account")
        if parts.hostname:
            kwargs["host"] = parts.hostname
        if parts.port:
            kwargs["port"] = parts.port
    else:
        kwargs["account"] = parts.hostname or ""
    for key in ("warehouse", "role", "protocol", "database", "authenticator"):
        if key in query:
            kwargs[key] = query.pop(key)
    if "network_timeout" in query:
        kwargs["network_timeout"] = int(query.pop("network_timeout"))
    if query:
        raise WarehouseError(f"unknown snowflake:// URL options: {', '.join(sorted(query))}")
    if not kwargs.get("database"):
        raise WarehouseError("snowflake:// URL names no database (snowflake://…/<database>)")
    return kwargs


class SnowflakeWarehouse:
    """A warehouse in one Snowflake database (`AIRFLOW_CONN_WAREHOUSE=snowflake://…`)."""

    kind = "snowflake"
    paramstyle = "format"

    def __init__(
        self,
        url: str | None = None,
        *,
        connection: dict[str, Any] | None = None,
        schemas: Sequence[str] = PUBLISHED_SCHEMAS,
        control_schema: str = CONTROL_SCHEMA,
        emulator: str | None = None,
    ) -> None:
        if (url is None) == (connection is None):
            raise WarehouseError("give the snowflake warehouse a url or connection kwargs")
        self.connection = dict(connection) if connection is not None else connect_kwargs(url)
        if emulator not in EMULATORS:
            raise WarehouseError(f"unknown emulator {emulator!r} (known: fakesnow)")
        self.emulator = emulator
        self.database = str(self.connection["database"])
        self.schemas = tuple(check_schema_name(s) for s in schemas)
        self.control = check_schema_name(control_schema).upper()
        if self.control in {s.upper() for s in self.schemas}:
            raise WarehouseError(f"control schema {self.control!r} cannot be a published one")
        self._control_ready = False

    # -- connections -----------------------------------------------------------------

    def describe(self) -> str:
        where = self.connection.get("host") or f"{self.connection.get('account')}"
        port = f":{self.connection['port']}" if self.connection.get("port") else ""
        extra = f" ({self.emulator})" if self.emulator else ""
        return f"snowflake warehouse {where}{port}/{self.database}{extra}"

    def connect(self) -> Any:
        try:
            import snowflake.connector
        except ImportError:
            raise WarehouseError(INSTALL_HINT) from None
        kwargs = {k: v for k, v in self.connection.items() if k != "database"}
        try:
            con = snowflake.connector.connect(**kwargs)
            cur = con.cursor()
            cur.execute(f"create database if not exists {ident(self.database)}")
            cur.execute(f"use database {ident(self.database)}")
            if not self.emulator:
                cur.execute("alter session set TIMEZONE = 'UTC'")
            else:
                # fakesnow's MERGE makes a helper table in the current schema: have one
                cur.execute("create schema if not exists PUBLIC")
                cur.execute("use schema PUBLIC")
        except snowflake.connector.errors.Error as exc:
            raise WarehouseError(f"cannot connect to {self.describe()}: {exc}") from None
        return con

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        con = self.connect()
        try:
            yield con.cursor()
        finally:
            con.close()

    def _mapping(self, build: Build | None) -> dict[str, str]:
        if build is None:
            return {s: s.upper() for s in self.schemas}
        return dict(build.schemas)

    def _table(self, build: Build, schema: str, table: str) -> str:
        return f"{quote_ident(build.schema(schema))}.{ident(table)}"

    def _ensure_control(self) -> None:
        if self._control_ready:
            return
        c = quote_ident(self.control)
        with self._cursor() as cur:
            cur.execute(f"create schema if not exists {c}")
            cur.execute(
                f"create table if not exists {c}.PUBLISH_STATE (ID NUMBER(1,0) not null, "
                "GENERATION NUMBER(38,0) not null, PUBLISHED_AT TIMESTAMP_TZ, RUN_ID VARCHAR)"
            )
            cur.execute(f"select count(*) from {c}.PUBLISH_STATE")
            if cur.fetchone()[0] == 0:
                cur.execute(f"insert into {c}.PUBLISH_STATE (ID, GENERATION) values (1, 0)")
            cur.execute(
                f"create table if not exists {c}.BUILDS (TOKEN VARCHAR not null, "
                "RUN_ID VARCHAR not null, BASE_GENERATION NUMBER(38,0) not null, "
                "STARTED_AT TIMESTAMP_TZ)"
            )
            for s in self.schemas:
                cur.execute(f"create schema if not exists {quote_ident(s.upper())}")
        self._control_ready = True

    def generation(self) -> int:
        self._ensure_control()
        with self._cursor() as cur:
            cur.execute(f"select GENERATION from {quote_ident(self.control)}.PUBLISH_STATE")
            return int(cur.fetchone()[0])

    # -- reads and bookkeeping -------------------------------------------------------

    def read_arrow(
        self, sql: str, params: Sequence[Any] = (), *, build: Build | None = None
    ) -> pa.Table:
        """`cursor.fetch_arrow_all()` (Snowflake's Arrow result batches); upper-case
        result columns renamed to lower case."""
        sql = substitute_schemas(sql, self._mapping(build))
        with self._cursor() as cur:
            cur.execute(sql, tuple(params) or None)
            names = [d.name for d in cur.description]
            table = cur.fetch_arrow_all(force_return_table=True)
        if table is None or table.num_columns != len(names):
            raise WarehouseError(f"{self.describe()}: no Arrow result for {sql[:80]!r}")
        return table.rename_columns([n.lower() if n == n.upper() else n for n in names])

    def execute(self, sql: str, params: Sequence[Any] = (), *, build: Build | None = None) -> int:
        sql = substitute_schemas(sql, self._mapping(build))
        with self._cursor() as cur:
            cur.execute(sql, tuple(params) or None)
            return max(cur.rowcount or 0, 0)

    # -- loads -----------------------------------------------------------------------

    @staticmethod
    def _files_schema(files: Sequence[Path]) -> pa.Schema:
        if not files:
            raise WarehouseError("no Parquet files to load")
        schema = pq.read_schema(files[0])
        for path in files[1:]:
            other = pq.read_schema(path)
            if other.names != schema.names or other.types != schema.types:
                raise WarehouseError(f"{path}: schema differs from {files[0]}")
        return schema

    def _create_from_schema(self, cur: Any, target: str, schema: pa.Schema, kind: str) -> None:
        columns = ", ".join(f"{ident(f.name)} {_arrow_to_snowflake(f.type)}" for f in schema)
        cur.execute(f"create {kind} {target} ({columns})")

    def _stage_files(self, cur: Any, build: Build, files: Sequence[Path]) -> str:
        """`CREATE TEMPORARY STAGE` in the build's raw schema, `PUT` every file into a
        fresh folder of it (no compression: Parquet is compressed already); the folder."""
        stage = f"{quote_ident(build.schema(self.schemas[0]))}.{quote_ident('NS_LOAD')}"
        cur.execute(f"create temporary stage if not exists {stage}")
        folder = f"{stage}/{secrets.token_hex(6)}"
        for path in files:
            uri = Path(path).resolve().as_uri()
            cur.execute(f"put '{uri}' @{folder} AUTO_COMPRESS = FALSE OVERWRITE = TRUE")
        return folder

    @staticmethod
    def _copy_into(cur: Any, target: str, folder: str) -> int:
        """`COPY INTO` from the stage folder, columns matched by name; rows loaded."""
        cur.execute(
            f"copy into {target} from @{folder} "
            "FILE_FORMAT = (TYPE = PARQUET USE_LOGICAL_TYPE = TRUE) "
            "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE ON_ERROR = ABORT_STATEMENT PURGE = TRUE"
        )
        names = [d.name.lower() for d in cur.description]
        rows = cur.fetchall()
        if "rows_loaded" not in names:  # "Copy executed with 0 files processed."
            return 0
        i = names.index("rows_loaded")
        return sum(int(r[i] or 0) for r in rows)

    def load_parquet(
        self, build: Build, schema: str, table: str, files: Sequence[Path], *, replace: bool = False
    ) -> int:
        """`CREATE TABLE IF NOT EXISTS` from the Arrow schema, `PUT` the files into a
        temporary stage, then in one transaction `DELETE` (replace) and `COPY INTO`."""
        files = [Path(f) for f in files]
        arrow_schema = self._files_schema(files)
        target = self._table(build, schema, table)
        with self._cursor() as cur:
            self._create_from_schema(cur, target, arrow_schema, "table if not exists")
            folder = self._stage_files(cur, build, files)
            cur.execute("begin")
            try:
                if replace:
                    cur.execute(f"delete from {target}")
                rows = self._copy_into(cur, target, folder)
            except BaseException:
                cur.execute("rollback")
                raise
            cur.execute("commit")
            return rows

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
        """`PUT` + `COPY INTO` a transient delta table, then one
        `MERGE INTO <t> USING (SELECT … QUALIFY ROW_NUMBER() OVER (PARTITION BY <keys>
        ORDER BY <cursor> DESC NULLS LAST) = 1) ON <keys> WHEN MATCHED THEN UPDATE …
        WHEN NOT MATCHED THEN INSERT …` (atomic on its own); the delta table dropped."""
        files = [Path(f) for f in files]
        keys = list(keys)
        arrow_schema = self._files_schema(files)
        missing = [k for k in keys + ([cursor] if cursor else []) if k not in arrow_schema.names]
        if not keys or missing:
            raise WarehouseError(f"merge into {schema}.{table}: key/cursor columns {missing}")
        target = self._table(build, schema, table)
        delta = f"{quote_ident(build.schema(schema))}.{quote_ident('NS_DELTA_' + secrets.token_hex(4).upper())}"
        cols = [ident(n) for n in arrow_schema.names]
        key_cols = ", ".join(ident(k) for k in keys)
        match = " and ".join(f"t.{ident(k)} = s.{ident(k)}" for k in keys)
        order = f"{ident(cursor)} desc nulls last" if cursor else key_cols
        non_keys = [ident(n) for n in arrow_schema.names if n not in keys]
        update = (
            ", ".join(f"t.{c} = s.{c}" for c in non_keys)
            or f"t.{ident(keys[0])} = s.{ident(keys[0])}"
        )
        with self._cursor() as cur:
            self._create_from_schema(cur, target, arrow_schema, "table if not exists")
            self._create_from_schema(cur, delta, arrow_schema, "transient table")
            try:
                folder = self._stage_files(cur, build, files)
                self._copy_into(cur, delta, folder)
                cur.execute(
                    f"merge into {target} as t using (select {', '.join(cols)} from {delta} "
                    f"qualify row_number() over (partition by {key_cols} order by {order}) = 1) as s "
                    f"on {match} when matched then update set {update} "
                    f"when not matched then insert ({', '.join(cols)}) "
                    f"values ({', '.join('s.' + c for c in cols)})"
                )
                names = [d.name.lower() for d in cur.description]
                row = cur.fetchone()
                counts = dict(zip(names, row, strict=True))
            finally:
                cur.execute(f"drop table if exists {delta}")
        return MergeResult(
            inserted=int(counts.get("number of rows inserted") or 0),
            updated=int(counts.get("number of rows updated") or 0),
        )

    def delete_keys(self, build: Build, schema: str, table: str, keys: pa.Table) -> int:
        """The keys as Parquet, `PUT` + `COPY INTO` a transient table, `DELETE … USING`."""
        target = self._table(build, schema, table)
        stage_table = f"{quote_ident(build.schema(schema))}.{quote_ident('NS_KEYS_' + secrets.token_hex(4).upper())}"
        match = " and ".join(f"t.{ident(k)} = s.{ident(k)}" for k in keys.column_names)
        with tempfile.TemporaryDirectory(prefix="nightshift-keys-") as tmp:
            path = Path(tmp) / "keys.parquet"
            pq.write_table(keys, path)
            with self._cursor() as cur:
                self._create_from_schema(cur, stage_table, keys.schema, "transient table")
                try:
                    folder = self._stage_files(cur, build, [path])
                    self._copy_into(cur, stage_table, folder)
                    cur.execute(f"delete from {target} as t using {stage_table} as s where {match}")
                    return max(cur.rowcount or 0, 0)
                finally:
                    cur.execute(f"drop table if exists {stage_table}")

    # -- builds ----------------------------------------------------------------------

    def _build_schema(self, schema: str, token: str) -> str:
        return f"{schema.upper()}__BUILD_{token}"

    def _tables(self, cur: Any, schema: str) -> list[str]:
        cur.execute(
            "select table_name from information_schema.tables "
            "where table_schema = %s and table_type in ('BASE TABLE', 'TABLE') order by 1",
            (schema,),
        )
        return [r[0] for r in cur.fetchall()]

    def _drop_run_builds(self, cur: Any, run_id: str) -> None:
        c = quote_ident(self.control)
        cur.execute(f"select TOKEN from {c}.BUILDS where RUN_ID = %s", (run_id,))
        for (token,) in cur.fetchall():
            for s in self.schemas:
                b = quote_ident(self._build_schema(s, token))
                cur.execute(f"drop schema if exists {b} cascade")
        cur.execute(f"delete from {c}.BUILDS where RUN_ID = %s", (run_id,))

    def begin_build(self, run_id: str) -> Build:
        """Real Snowflake: `CREATE SCHEMA <s>__BUILD_<token> CLONE <s>` for every
        published schema (zero-copy; one statement each, so the schemas are cloned at
        slightly different moments: a publish between two of them is caught by the
        generation check of `publish`)."""
        self._ensure_control()
        token = _TOKEN_RE.sub("", run_id.upper())[:24] + "_" + secrets.token_hex(3).upper()
        c = quote_ident(self.control)
        with self._cursor() as cur:
            self._drop_run_builds(cur, run_id)
            cur.execute(f"select GENERATION from {c}.PUBLISH_STATE")
            base = int(cur.fetchone()[0])
            schemas = {s: self._build_schema(s, token) for s in self.schemas}
            cur.execute(
                f"insert into {c}.BUILDS (TOKEN, RUN_ID, BASE_GENERATION, STARTED_AT) "
                "values (%s, %s, %s, current_timestamp())",
                (token, run_id, base),
            )
            if self.emulator:
                self._begin_build_emulated(cur, schemas)
            else:
                for s, b in schemas.items():
                    cur.execute(f"create schema {quote_ident(b)} clone {quote_ident(s.upper())}")
        return Build(backend=self.kind, run_id=run_id, token=token, base=base, schemas=schemas)

    def _begin_build_emulated(self, cur: Any, schemas: dict[str, str]) -> None:
        """fakesnow: no `CREATE SCHEMA … CLONE`; a new schema and one
        `CREATE TABLE … CLONE` per table (fakesnow copies the rows)."""
        for s, b in schemas.items():
            cur.execute(f"create schema {quote_ident(b)}")
            for t in self._tables(cur, s.upper()):
                cur.execute(
                    f"create table {quote_ident(b)}.{quote_ident(t)} "
                    f"clone {quote_ident(s.upper())}.{quote_ident(t)}"
                )

    def _check_build(self, cur: Any, build: Build) -> None:
        cur.execute(
            f"select count(*) from {quote_ident(self.control)}.BUILDS where TOKEN = %s",
            (build.token,),
        )
        if cur.fetchone()[0] == 0:
            raise BuildNotFoundError(f"{self.describe()}: build {build.token} is gone")

    def publish(self, build: Build, *, check_lease: Callable[[], None] | None = None) -> float:
        """1. the build must be recorded; 2. the lease check; 3. claim the publish:
        `UPDATE PUBLISH_STATE SET GENERATION = GENERATION + 1 … WHERE GENERATION = <base>`
        (0 rows: PublishConflictError), committed; 4. real Snowflake:
        `ALTER SCHEMA <s>__BUILD_<token> SWAP WITH <s>` for every schema, then
        `DROP SCHEMA <s>__BUILD_<token>` (the old state after the swap).

        Every SWAP is DDL and commits on its own: a reader's query between two swaps can
        join a new `raw` with an old `analytics` (milliseconds wide, but not atomic as
        the PostgreSQL publish is). The fix the docs plan is one database per build
        (`CREATE DATABASE … CLONE`, one `ALTER DATABASE … SWAP WITH`)."""
        self._ensure_control()
        c = quote_ident(self.control)
        started = time.monotonic()
        with self._cursor() as cur:
            self._check_build(cur, build)
            if check_lease is not None:
                check_lease()
            cur.execute("begin")
            cur.execute(
                f"update {c}.PUBLISH_STATE set GENERATION = GENERATION + 1, "
                "PUBLISHED_AT = current_timestamp(), RUN_ID = %s where GENERATION = %s",
                (build.run_id, build.base),
            )
            claimed = cur.rowcount
            if not claimed:
                cur.execute("rollback")
                cur.execute(f"select RUN_ID from {c}.PUBLISH_STATE")
                other = cur.fetchone()[0]
                raise PublishConflictError(
                    f"{self.describe()}: run {other} published since build {build.token} "
                    f"began (base generation {build.base})"
                )
            cur.execute(f"delete from {c}.BUILDS where TOKEN = %s", (build.token,))
            cur.execute("commit")
            if self.emulator:
                self._publish_emulated(cur, build)
            else:
                for s in self.schemas:
                    b = quote_ident(build.schema(s))
                    cur.execute(f"alter schema {b} swap with {quote_ident(s.upper())}")
                seconds = time.monotonic() - started
                for s in self.schemas:
                    cur.execute(f"drop schema if exists {quote_ident(build.schema(s))} cascade")
                return seconds
        return time.monotonic() - started

    def _publish_emulated(self, cur: Any, build: Build) -> None:
        """fakesnow: no SWAP WITH, no schema rename: each published table is replaced by
        `DROP TABLE <s>.<t>` + `CREATE TABLE <s>.<t> CLONE <build>.<t>` and tables the
        build dropped are dropped. Not atomic; the emulated test's readers run after it."""
        for s in self.schemas:
            pub, b = s.upper(), build.schema(s)
            new = self._tables(cur, b)
            for t in new:
                # fakesnow 0.12.1 turns CLONE into CTAS and ignores OR REPLACE: drop first
                cur.execute(f"drop table if exists {quote_ident(pub)}.{quote_ident(t)}")
                cur.execute(
                    f"create table {quote_ident(pub)}.{quote_ident(t)} "
                    f"clone {quote_ident(b)}.{quote_ident(t)}"
                )
            for t in set(self._tables(cur, pub)) - set(new):
                cur.execute(f"drop table {quote_ident(pub)}.{quote_ident(t)}")
            cur.execute(f"drop schema if exists {quote_ident(b)} cascade")

    def abandon_build(self, build: Build) -> None:
        """`DROP SCHEMA … CASCADE` of the build's schemas and its record."""
        self._ensure_control()
        with self._cursor() as cur:
            for s in self.schemas:
                cur.execute(f"drop schema if exists {quote_ident(build.schema(s))} cascade")
            cur.execute(
                f"delete from {quote_ident(self.control)}.BUILDS where TOKEN = %s", (build.token,)
            )

    def lease_backend(self) -> Any:
        """Not implemented yet (planned: a row of NIGHTSHIFT_CONTROL.LEASE changed with a
        conditional UPDATE); the nightly does not run on Snowflake yet."""
        raise WarehouseError(f"{self.describe()}: the run lease is not implemented on Snowflake")
