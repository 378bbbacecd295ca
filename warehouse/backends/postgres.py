"""PostgreSQL warehouse: COPY-fed loads, builds in private schemas, publish by schema swap.

- Loads: Parquet is read with pyarrow in batches (bounded memory), each batch written as
  CSV into `COPY … FROM STDIN (FORMAT csv)`.
- Builds: `begin_build` copies every published schema `<s>` into `<s>__build_<token>`
  (`CREATE TABLE … (LIKE … INCLUDING ALL)` + `INSERT … SELECT`); the run writes there
  only, so the published schemas never see a half-done run (a killed run leaves only
  private schemas behind; the next attempt of the run drops them).
- Publish: ONE transaction locks every published table (`lock_timeout`: a reader holding
  one is not waited on for long, the publish retries), checks the published generation
  is still the one the build copied (else PublishConflictError), renames `<s>` →
  `<s>__old_<token>` and `<s>__build_<token>` → `<s>` for every schema, drops the old
  ones and bumps the generation. A reader sees the old state or the new state: its
  query's tables are resolved and locked together, and a lookup blocked on a locked old
  table is redone after the commit, against the new schemas.

State that is not published (generation, builds) lives in the control schema
`nightshift_control`, never swapped.
"""

from __future__ import annotations

import io
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg import errors as pgerrors

from warehouse.backends.base import (
    PUBLISHED_SCHEMAS,
    Build,
    BuildNotFoundError,
    MergeResult,
    PublishBlockedError,
    PublishConflictError,
    SessionColumns,
    WarehouseError,
    check_schema_name,
    parquet_files,
    qmark_to_format,
    quote_ident,
    substitute_schemas,
)
from warehouse.lease import Lease, RowLease

log = logging.getLogger(__name__)

CONTROL_SCHEMA = "nightshift_control"
BATCH_ROWS = 65_536
_TOKEN_RE = re.compile(r"[^a-z0-9]+")


def libpq_url(url: str) -> str:
    """`postgres://`, `postgresql://` or SQLAlchemy's `postgresql+psycopg://` → libpq URL."""
    for prefix in ("postgresql+psycopg2://", "postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def _safe(url: str) -> str:
    from extract.replica import safe_url

    return safe_url(url)


def _arrow_to_pg(t: pa.DataType) -> str:
    if pa.types.is_int64(t) or pa.types.is_uint32(t):
        return "bigint"
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return "integer"
    if pa.types.is_int16(t) or pa.types.is_int8(t) or pa.types.is_uint8(t):
        return "smallint"
    if pa.types.is_float64(t):
        return "double precision"
    if pa.types.is_float32(t) or pa.types.is_float16(t):
        return "real"
    if pa.types.is_decimal(t):
        return f"numeric({t.precision},{t.scale})"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    raise WarehouseError(f"no PostgreSQL column type for Arrow type {t}")


def _pg_to_arrow(type_code: int, precision: int | None, scale: int | None) -> pa.DataType | None:
    """Arrow type of a result column (None: let pyarrow infer)."""
    oid = {
        20: pa.int64(),
        23: pa.int32(),
        21: pa.int16(),
        701: pa.float64(),
        700: pa.float32(),
        25: pa.string(),
        1043: pa.string(),
        1042: pa.string(),
        16: pa.bool_(),
        1082: pa.date32(),
        1184: pa.timestamp("us", tz="UTC"),
        1114: pa.timestamp("us"),
    }
    if type_code == 1700:  # numeric
        if precision is not None and scale is not None and 0 < precision <= 38:
            return pa.decimal128(precision, scale)
        return None
    return oid.get(type_code)


class PostgresSession:
    """`base.Session` on one PostgreSQL connection inside a transaction."""

    kind = "postgres"

    def __init__(self, con: psycopg.Connection, schemas: dict[str, str]) -> None:
        self.con = con
        self.schemas = schemas

    def _sql(self, sql: str, params: Sequence[Any]) -> str:
        sql = substitute_schemas(sql, self.schemas)
        return qmark_to_format(sql) if params else sql

    def _cursor(self, sql: str, params: Sequence[Any]) -> psycopg.Cursor:
        return self.con.execute(self._sql(sql, params), list(params) if params else None)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return max(self._cursor(sql, params).rowcount, 0)

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self._cursor(sql, params).fetchone()

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._cursor(sql, params).fetchall()

    def table(self, schema: str, table: str) -> str:
        return f"{quote_ident(self.schemas.get(schema, schema))}.{quote_ident(table)}"

    def exists(self, schema: str, table: str) -> bool:
        row = self.con.execute(
            "select to_regclass(%s) is not null", [self.table(schema, table)]
        ).fetchone()
        return bool(row and row[0])

    def table_columns(self, relation: str) -> dict[str, pa.DataType]:
        cur = self.con.execute(f"select * from {relation} limit 0")
        json_types = {114: pa.string(), 3802: pa.string()}  # json, jsonb: text, as DuckDB's
        return {
            d.name: json_types.get(d.type_code)
            or _pg_to_arrow(d.type_code, d.precision, d.scale)
            or pa.null()
            for d in cur.description or []
        }

    def column_type(self, type_: pa.DataType) -> str:
        return _arrow_to_pg(type_)

    def add_column(self, relation: str, name: str, type_: pa.DataType) -> None:
        self.con.execute(
            f"alter table {relation} add column {quote_ident(name)} {_arrow_to_pg(type_)}"
        )

    def widen_column(self, relation: str, name: str, type_: pa.DataType) -> None:
        self.con.execute(
            f"alter table {relation} alter column {quote_ident(name)} type {_arrow_to_pg(type_)}"
        )

    def stage_parquet(
        self, name: str, directories: Sequence[Path], *, union_by_name: bool = True
    ) -> list[str]:
        files = parquet_files(directories)
        if not files:
            raise WarehouseError(f"no Parquet files in {', '.join(map(str, directories))}")
        schemas = [pq.read_schema(f) for f in files]
        if union_by_name:
            unified = pa.unify_schemas([sc.remove_metadata() for sc in schemas])
        else:
            unified = schemas[0].remove_metadata()
            for f, sc in zip(files, schemas, strict=True):
                if sc.names != unified.names:
                    raise WarehouseError(f"{f}: columns differ from {files[0]}")
        target = quote_ident(name)
        self.con.execute(f"drop table if exists pg_temp.{target}")
        columns = ", ".join(f"{quote_ident(f.name)} {_arrow_to_pg(f.type)}" for f in unified)
        self.con.execute(f"create temporary table {target} ({columns}) on commit drop")
        options = pacsv.WriteOptions(include_header=False)
        for path, sc in zip(files, schemas, strict=True):
            names = sc.names
            column_list = ", ".join(quote_ident(n) for n in names)
            copy_sql = f"copy {target} ({column_list}) from stdin (format csv)"
            with self.con.cursor().copy(copy_sql) as copy:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
                    buf = io.BytesIO()
                    pacsv.write_csv(batch.select(names), buf, options)
                    copy.write(buf.getbuffer())
        # Autovacuum never analyzes temporary tables: without statistics the planner
        # guesses, and a guessed anti-join with a LIMIT became a nested loop over every
        # row (the mass-delete guard's sample at 1M orders: ~870 s instead of ~1 s).
        self.con.execute(f"analyze {target}")
        return unified.names

    def create_temp(
        self, name: str, select_sql: str, params: Sequence[Any] = (), *, columns: str = ""
    ) -> None:
        target = quote_ident(name)
        self.con.execute(f"drop table if exists pg_temp.{target}")
        if columns:
            self.con.execute(f"create temporary table {target} ({columns}) on commit drop")
        else:
            self._cursor(f"create temporary table {target} on commit drop as {select_sql}", params)
            self.con.execute(f"analyze {target}")  # statistics, as for stage_parquet

    def dedupe(
        self,
        name: str,
        source: str,
        columns: Sequence[str],
        keys: Sequence[str],
        cursor: str | None,
    ) -> None:
        key_cols = ", ".join(quote_ident(k) for k in keys)
        order = f", {quote_ident(cursor)} desc nulls last" if cursor else ""
        self.create_temp(
            name, f"select distinct on ({key_cols}) * from {source} order by {key_cols}{order}"
        )

    def days_interval(self, expr: str) -> str:
        return f"make_interval(days => {expr})"

    def read_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        with self.con.cursor() as cur:
            cur.execute(self._sql(sql, params), list(params) if params else None)
            return _cursor_to_arrow(cur)

    def insert_arrow(self, relation: str, data: pa.Table) -> int:
        return copy_arrow(self.con, relation, data)


class PostgresWarehouse(SessionColumns):
    """A warehouse in one PostgreSQL database (`AIRFLOW_CONN_WAREHOUSE=postgresql://…`)."""

    kind = "postgres"
    paramstyle = "format"

    def __init__(
        self,
        url: str,
        *,
        schemas: Sequence[str] = PUBLISHED_SCHEMAS,
        lock_timeout_ms: int = 50,
        publish_attempts: int = 50,
        control_schema: str = CONTROL_SCHEMA,
    ) -> None:
        self.url = libpq_url(url)
        self.schemas = tuple(check_schema_name(s) for s in schemas)
        self.lock_timeout_ms = int(lock_timeout_ms)
        self.publish_attempts = int(publish_attempts)
        self.control = check_schema_name(control_schema)
        if self.control in self.schemas:
            raise WarehouseError(f"control schema {self.control!r} cannot be a published one")
        self._control_ready = False

    # -- connections -----------------------------------------------------------------

    def describe(self) -> str:
        return f"postgres warehouse {_safe(self.url)}"

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection:
        try:
            con = psycopg.connect(self.url, autocommit=autocommit)
        except psycopg.OperationalError as exc:
            raise WarehouseError(f"cannot connect to {self.describe()}: {exc}") from None
        con.execute("set timezone = 'UTC'")
        if not autocommit:
            con.commit()
        return con

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection]:
        con = self.connect()
        try:
            with con.transaction():
                yield con
        finally:
            con.close()

    def _mapping(self, build: Build | None) -> dict[str, str]:
        if build is None:
            return {s: s for s in self.schemas}
        return dict(build.schemas)

    def _ensure_control(self) -> None:
        if self._control_ready:
            return
        c = quote_ident(self.control)
        with self._tx() as con:
            con.execute("select pg_advisory_xact_lock(hashtext(%s))", [self.control])
            con.execute(f"create schema if not exists {c}")
            con.execute(
                f"create table if not exists {c}.publish_state ("
                "id int primary key check (id = 1), generation bigint not null, "
                "published_at timestamptz, run_id text)"
            )
            con.execute(
                f"insert into {c}.publish_state (id, generation) values (1, 0) "
                "on conflict (id) do nothing"
            )
            con.execute(
                f"create table if not exists {c}.builds ("
                "token text primary key, run_id text not null, base_generation bigint not null, "
                "started_at timestamptz not null default now())"
            )
        self._control_ready = True

    def generation(self) -> int:
        """The published generation (0: nothing published through a build yet)."""
        self._ensure_control()
        with self._tx() as con:
            row = con.execute(
                f"select generation from {quote_ident(self.control)}.publish_state where id = 1"
            ).fetchone()
        return int(row[0])

    # -- reads and bookkeeping -------------------------------------------------------

    def read_arrow(
        self, sql: str, params: Sequence[Any] = (), *, build: Build | None = None
    ) -> pa.Table:
        con = self.connect()
        try:
            return PostgresSession(con, self._mapping(build)).read_arrow(sql, params)
        finally:
            con.rollback()
            con.close()

    def execute(self, sql: str, params: Sequence[Any] = (), *, build: Build | None = None) -> int:
        with self._tx() as con:
            return PostgresSession(con, self._mapping(build)).execute(sql, params)

    @contextmanager
    def transaction(self, build: Build | None = None) -> Iterator[PostgresSession]:
        """One transaction on the build's schemas, or on the published ones when `build`
        is None (bookkeeping such as a failed gate's `ops.quality_results`)."""
        with self._tx() as con:
            yield PostgresSession(con, self._mapping(build))

    # -- loads -----------------------------------------------------------------------

    def _create_from_schema(
        self, con: psycopg.Connection, target: str, schema: pa.Schema, *, temp: bool = False
    ) -> None:
        columns = ", ".join(f"{quote_ident(f.name)} {_arrow_to_pg(f.type)}" for f in schema)
        kind = "temporary table" if temp else "table if not exists"
        suffix = " on commit drop" if temp else ""
        con.execute(f"create {kind} {target} ({columns}){suffix}")

    def _copy_files(
        self, con: psycopg.Connection, target: str, files: Sequence[Path], schema: pa.Schema
    ) -> int:
        """COPY every file's rows into `target`, one Arrow batch at a time."""
        names = schema.names
        column_list = ", ".join(quote_ident(n) for n in names)
        rows = 0
        options = pacsv.WriteOptions(include_header=False)
        with con.cursor().copy(f"copy {target} ({column_list}) from stdin (format csv)") as copy:
            for path in files:
                pf = pq.ParquetFile(path)
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=names):
                    batch = batch.select(names)
                    buf = io.BytesIO()
                    pacsv.write_csv(batch, buf, options)
                    copy.write(buf.getbuffer())
                    rows += batch.num_rows
        return rows

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

    def load_parquet(
        self, build: Build, schema: str, table: str, files: Sequence[Path], *, replace: bool = False
    ) -> int:
        files = [Path(f) for f in files]
        arrow_schema = self._files_schema(files)
        target = build.table(schema, table)
        with self._tx() as con:
            self._create_from_schema(con, target, arrow_schema)
            if replace:
                con.execute(f"truncate {target}")
            return self._copy_files(con, target, files, arrow_schema)

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
        files = [Path(f) for f in files]
        keys = list(keys)
        arrow_schema = self._files_schema(files)
        missing = [k for k in keys + ([cursor] if cursor else []) if k not in arrow_schema.names]
        if not keys or missing:
            raise WarehouseError(f"merge into {schema}.{table}: key/cursor columns {missing}")
        target = build.table(schema, table)
        stage = quote_ident(f"_stage_{secrets.token_hex(4)}")
        cols = ", ".join(quote_ident(n) for n in arrow_schema.names)
        key_cols = ", ".join(quote_ident(k) for k in keys)
        match = " and ".join(f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in keys)
        order = f", {quote_ident(cursor)} desc nulls last" if cursor else ""
        with self._tx() as con:
            self._create_from_schema(con, target, arrow_schema)
            self._create_from_schema(con, stage, arrow_schema, temp=True)
            self._copy_files(con, stage, files, arrow_schema)
            latest = quote_ident(f"{stage.strip(chr(34))}_latest")
            con.execute(
                f"create temporary table {latest} on commit drop as "
                f"select distinct on ({key_cols}) {cols} from {stage} "
                f"order by {key_cols}{order}"
            )
            updated = con.execute(f"delete from {target} t using {latest} s where {match}").rowcount
            total = con.execute(
                f"insert into {target} ({cols}) select {cols} from {latest}"
            ).rowcount
        return MergeResult(inserted=total - updated, updated=updated)

    def delete_keys(self, build: Build, schema: str, table: str, keys: pa.Table) -> int:
        target = build.table(schema, table)
        stage = quote_ident(f"_keys_{secrets.token_hex(4)}")
        match = " and ".join(f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in keys.column_names)
        cols = ", ".join(quote_ident(k) for k in keys.column_names)
        with self._tx() as con:
            self._create_from_schema(con, stage, keys.schema, temp=True)
            with con.cursor().copy(f"copy {stage} ({cols}) from stdin (format csv)") as copy:
                for batch in keys.to_batches(max_chunksize=BATCH_ROWS):
                    buf = io.BytesIO()
                    pacsv.write_csv(batch, buf, pacsv.WriteOptions(include_header=False))
                    copy.write(buf.getbuffer())
            return con.execute(f"delete from {target} t using {stage} s where {match}").rowcount

    # -- builds ------------------------------------------------------------------------

    def _token(self, run_id: str) -> str:
        stem = _TOKEN_RE.sub("_", run_id.lower()).strip("_")[:20] or "run"
        return f"{stem}_{secrets.token_hex(4)}"

    def _existing_schemas(self, con: psycopg.Connection) -> set[str]:
        return {
            r[0]
            for r in con.execute(
                "select nspname from pg_namespace where nspname = any(%s)", [list(self.schemas)]
            ).fetchall()
        }

    def _tables(self, con: psycopg.Connection, schema: str) -> list[str]:
        return [
            r[0]
            for r in con.execute(
                "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = %s and c.relkind in ('r', 'p') order by c.relname",
                [schema],
            ).fetchall()
        ]

    def _drop_build_schemas(self, con: psycopg.Connection, token: str) -> None:
        for s in self.schemas:
            con.execute(f"drop schema if exists {quote_ident(f'{s}__build_{token}')} cascade")

    def begin_build(self, run_id: str) -> Build:
        self._ensure_control()
        c = quote_ident(self.control)
        token = self._token(run_id)
        started = time.perf_counter()
        with self._tx() as con:
            # A publish needs this row FOR UPDATE: none commits while the copy is made,
            # so every table is copied from the same published generation.
            base = con.execute(
                f"select generation from {c}.publish_state where id = 1 for share"
            ).fetchone()[0]
            for (old,) in con.execute(
                f"select token from {c}.builds where run_id = %s", [run_id]
            ).fetchall():
                self._drop_build_schemas(con, old)  # an earlier attempt of this run
            con.execute(f"delete from {c}.builds where run_id = %s", [run_id])
            existing = self._existing_schemas(con)
            views = con.execute(
                "select n.nspname || '.' || c.relname from pg_class c "
                "join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = any(%s) and c.relkind in ('v', 'm') order by 1",
                [list(self.schemas)],
            ).fetchall()
            if views:  # dbt recreates its views in the build; nothing else may rely on them
                log.warning(
                    "build %s does not copy views (dbt builds them in the build): %s",
                    token,
                    ", ".join(v[0] for v in views),
                )
            schemas: dict[str, str] = {}
            for s in self.schemas:
                b = f"{s}__build_{token}"
                schemas[s] = b
                con.execute(f"create schema {quote_ident(b)}")
                if s not in existing:
                    continue
                for t in self._tables(con, s):
                    src = f"{quote_ident(s)}.{quote_ident(t)}"
                    dst = f"{quote_ident(b)}.{quote_ident(t)}"
                    con.execute(f"create table {dst} (like {src} including all)")
                    con.execute(f"insert into {dst} select * from {src}")
                    # planner statistics now, not when autovacuum gets to it: dbt's
                    # incremental statements on the build are planned from them
                    con.execute(f"analyze {dst}")
            con.execute(
                f"insert into {c}.builds (token, run_id, base_generation) values (%s, %s, %s)",
                [token, run_id, base],
            )
        log.info("build %s of generation %s in %.2fs", token, base, time.perf_counter() - started)
        return Build(backend=self.kind, run_id=run_id, token=token, base=base, schemas=schemas)

    def open_build(self, run_id: str) -> Build | None:
        self._ensure_control()
        with self._tx() as con:
            row = con.execute(
                f"select token, base_generation from {quote_ident(self.control)}.builds "
                "where run_id = %s order by started_at desc limit 1",
                [run_id],
            ).fetchone()
        if row is None:
            return None
        token, base = row
        return Build(
            backend=self.kind,
            run_id=run_id,
            token=token,
            base=base,
            schemas={s: f"{s}__build_{token}" for s in self.schemas},
        )

    def publish(
        self,
        build: Build,
        *,
        check_lease: Callable[[], None] | None = None,
        version: str | None = None,
        keep: int = 0,
    ) -> float:
        # version/keep: published versions are a DuckDB-file feature (make rollback)
        self._ensure_control()
        last: Exception | None = None
        for attempt in range(1, self.publish_attempts + 1):
            try:
                return self._publish_once(build, check_lease)
            except (pgerrors.LockNotAvailable, pgerrors.DeadlockDetected) as exc:
                # a reader holds a published table (or a build is being copied)
                last = exc
                log.info("publish attempt %d: lock_timeout, retrying", attempt)
                time.sleep(min(0.05 * attempt, 0.5))
        raise PublishBlockedError(
            f"not published: {self.publish_attempts} attempts could not lock the published "
            f"tables within lock_timeout={self.lock_timeout_ms}ms (a long transaction holds "
            f"one open): {last}"
        )

    def _publish_once(self, build: Build, check_lease: Callable[[], None] | None) -> float:
        c = quote_ident(self.control)
        con = self.connect()
        try:
            with con.transaction():
                con.execute(
                    "select set_config('lock_timeout', %s, true)", [f"{self.lock_timeout_ms}ms"]
                )
                row = con.execute(
                    f"select base_generation from {c}.builds where token = %s", [build.token]
                ).fetchone()
                if row is None:
                    raise BuildNotFoundError(
                        f"build {build.token} of run {build.run_id} is gone (abandoned, or "
                        "replaced by a newer attempt of the run): nothing to publish"
                    )
                current = con.execute(
                    f"select generation, published_at, run_id from {c}.publish_state "
                    "where id = 1 for update"
                ).fetchone()
                if int(current[0]) != int(row[0]):
                    raise PublishConflictError(
                        f"not published: {self.describe()} changed since build {build.token} "
                        f"was copied from generation {row[0]} (run {current[2]} published "
                        f"generation {current[0]} at {current[1]}); this build would revert "
                        "that publish. Rerun the day: it starts from what is published now."
                    )
                if check_lease is not None:
                    check_lease()
                started = time.perf_counter()
                existing = self._existing_schemas(con)
                published = [
                    f"{quote_ident(s)}.{quote_ident(t)}"
                    for s in self.schemas
                    if s in existing
                    for t in self._tables(con, s)
                ]
                if published:  # all at once, or lock_timeout and a retry
                    con.execute(f"lock table {', '.join(published)} in access exclusive mode")
                for s in self.schemas:
                    b = build.schemas[s]
                    if s in existing:
                        con.execute(
                            f"alter schema {quote_ident(s)} rename to "
                            f"{quote_ident(f'{s}__old_{build.token}')}"
                        )
                    con.execute(f"alter schema {quote_ident(b)} rename to {quote_ident(s)}")
                for s in self.schemas:
                    if s in existing:
                        con.execute(f"drop schema {quote_ident(f'{s}__old_{build.token}')} cascade")
                con.execute(
                    f"update {c}.publish_state set generation = generation + 1, "
                    "published_at = now(), run_id = %s where id = 1",
                    [build.run_id],
                )
                con.execute(f"delete from {c}.builds where token = %s", [build.token])
                seconds = time.perf_counter() - started
        except pgerrors.InvalidSchemaName as exc:
            raise BuildNotFoundError(
                f"build {build.token}: a build schema is missing: {exc}"
            ) from None
        finally:
            con.close()
        log.info("published build %s of run %s in %.4fs", build.token, build.run_id, seconds)
        return seconds

    def abandon_build(self, build: Build) -> None:
        self._ensure_control()
        with self._tx() as con:
            self._drop_build_schemas(con, build.token)
            con.execute(
                f"delete from {quote_ident(self.control)}.builds where token = %s", [build.token]
            )

    def lease_backend(self) -> PostgresLease:
        self._ensure_control()
        return PostgresLease(self)


class PostgresLease(RowLease):
    """`warehouse.lease.LeaseBackend` of a PostgreSQL warehouse: one row of
    `<control>.lease`, read and changed under `SELECT … FOR UPDATE` (every method is one
    transaction, atomic with the others). Expiry and takeover follow `FileLease`."""

    name = "postgres"

    def __init__(self, warehouse: PostgresWarehouse) -> None:
        self.warehouse = warehouse
        self.table = f"{quote_ident(warehouse.control)}.lease"
        with warehouse._tx() as con:
            con.execute(
                f"create table if not exists {self.table} ("
                "id int primary key check (id = 1), lease jsonb)"
            )
            con.execute(
                f"insert into {self.table} (id, lease) values (1, null) on conflict do nothing"
            )

    @contextmanager
    def _locked(self) -> Iterator[tuple[psycopg.Connection, Lease | None]]:
        with self.warehouse._tx() as con:
            row = con.execute(f"select lease from {self.table} where id = 1 for update").fetchone()
            data = row[0] if row else None
            yield con, Lease.from_dict(data) if data else None

    def _write(self, con: psycopg.Connection, lease: Lease | None) -> None:
        from dataclasses import asdict

        from psycopg.types.json import Jsonb

        value = Jsonb(asdict(lease)) if lease is not None else None
        con.execute(f"update {self.table} set lease = %s where id = 1", [value])


def copy_arrow(con: psycopg.Connection, relation: str, data: pa.Table) -> int:
    """COPY an Arrow table's rows into `relation` (columns by name), batch by batch as CSV."""
    if data.num_rows == 0:
        return 0
    cols = ", ".join(quote_ident(n) for n in data.column_names)
    options = pacsv.WriteOptions(include_header=False)
    with con.cursor().copy(f"copy {relation} ({cols}) from stdin (format csv)") as copy:
        for batch in data.to_batches(max_chunksize=BATCH_ROWS):
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, options)
            copy.write(buf.getbuffer())
    return data.num_rows


def _cursor_to_arrow(cur: psycopg.Cursor) -> pa.Table:
    desc = cur.description or []
    names = [d.name for d in desc]
    types = [_pg_to_arrow(d.type_code, d.precision, d.scale) for d in desc]
    columns: list[list[Any]] = [[] for _ in names]
    while True:
        chunk = cur.fetchmany(BATCH_ROWS)
        if not chunk:
            break
        for row in chunk:
            for i, value in enumerate(row):
                columns[i].append(value)
    arrays = []
    for values, t in zip(columns, types, strict=True):
        if t is None and any(isinstance(v, Decimal) for v in values):
            arrays.append(pa.array(values))
        else:
            arrays.append(pa.array(values, type=t))
    return pa.Table.from_arrays(arrays, names=names)
