"""Snowflake warehouse: PUT + COPY INTO loads, MERGE by key, builds as zero-copy clones,
publish by `ALTER SCHEMA … SWAP WITH`; a `Session` per transaction, the run lease a row
of `NIGHTSHIFT_CONTROL.LEASE`.

Configuration: `AIRFLOW_CONN_WAREHOUSE=snowflake://<user>:<password>@<account>/<database>
?warehouse=<wh>&role=<role>` (`connect_kwargs`). Against fakesnow's server (the emulated
test): `snowflake://fake:snow@127.0.0.1:<port>/<database>?account=fakesnow&protocol=http
&emulator=fakesnow`: the `emulator=fakesnow` option is the only way to get the emulator
paths below.

Identifiers: Snowflake folds unquoted names to upper case, and dbt-snowflake creates its
schemas and tables unquoted, so the published schema `raw` is the physical schema `RAW`,
a table `orders` is `ORDERS` and a Parquet column `total` is `TOTAL`. Every statement
this module runs goes through `snowflake_sql`, which turns a quoted all-lower-case plain
name (`"orders"`, what the pipeline's portable SQL writes) into its upper-case form
(`"ORDERS"`); a name that is not (`"order-ref"`, `"Total"`) keeps its case, quoted.
Result columns and `table_columns` come back in lower case when they are upper-case
plain names, as the other backends name them.

`snowflake_sql` also rewrites the few portable idioms of the pipeline's SQL Snowflake
spells differently: `now()` → `current_timestamp()`, `timezone(tz, ts)` →
`convert_timezone(tz, ts)`, a `json` column type → `varchar`, `count(*) filter (where
…)` → `count_if(…)`.

Transactions: a Snowflake DDL statement commits the open transaction; a `Session`
(`transaction`) is one transaction for its DML, but a `CREATE`/`ALTER` inside it commits
what came before. The run writes only its build, which publish swaps in whole, so a
failed step leaves a build the rerun replaces (`begin_build`) or reuses, never a partial
published state.

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

import json
import logging
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
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
    SessionColumns,
    WarehouseError,
    check_schema_name,
    parquet_files,
    quote_ident,
    substitute_schemas,
)
from warehouse.lease import Lease, RowLease

log = logging.getLogger(__name__)

CONTROL_SCHEMA = "NIGHTSHIFT_CONTROL"
INSTALL_HINT = (
    "the snowflake warehouse needs snowflake-connector-python (requirements.txt; "
    "`make venv` installs it into .venv)"
)
EMULATORS = (None, "fakesnow")
_LOWER_PLAIN = re.compile(r"^[a-z_][a-z0-9_$]*$")
_UPPER_PLAIN = re.compile(r"^[A-Z_][A-Z0-9_$]*$")
_TOKEN_RE = re.compile(r"[^a-z0-9]+")

# The real statements the emulated test cannot run on fakesnow (checked by
# tests/warehouse/test_snowflake_emulated.py: it runs each and expects fakesnow to refuse
# it, so a fakesnow release that supports one makes the test say so).
_REAL_STATEMENTS = {
    "schema_clone": "CREATE SCHEMA <s>__BUILD_<token> CLONE <s>",
    "schema_swap": "ALTER SCHEMA <s>__BUILD_<token> SWAP WITH <s>",
    "database_swap": "ALTER DATABASE <db>__BUILD_<token> SWAP WITH <db>",
}

# A quoted identifier or a string literal (kept as is), outside of which the idioms are
# rewritten.
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"((?:[^\"]|\"\")*)\"")
_IDIOMS = (
    (re.compile(r"\bnow\(\s*\)", re.I), "current_timestamp()"),
    (re.compile(r"\btimezone\(", re.I), "convert_timezone("),
    (re.compile(r"(?<![\w.])json\b(?!\s*\()", re.I), "varchar"),
    (re.compile(r"\bcount\(\s*\*\s*\)\s+filter\s*\(\s*where\s+", re.I), "count_if("),
)


def _rewrite_idioms(text: str) -> str:
    for pattern, repl in _IDIOMS:
        text = pattern.sub(repl, text)
    return text


def snowflake_sql(sql: str) -> str:
    """The pipeline's portable SQL as Snowflake runs it: quoted all-lower-case plain
    identifiers upper-cased (`"orders"` → `"ORDERS"`), the idioms of the module
    docstring rewritten outside string literals and quoted names."""
    out: list[str] = []
    pos = 0
    for m in _TOKENS.finditer(sql):
        out.append(_rewrite_idioms(sql[pos : m.start()]))
        name = m.group(1)
        if name is not None and _LOWER_PLAIN.match(name):
            out.append('"' + name.upper() + '"')
        else:
            out.append(m.group(0))
        pos = m.end()
    out.append(_rewrite_idioms(sql[pos:]))
    return "".join(out)


_SUM = re.compile(r"\bsum\s*\(", re.I)


def exact_sums(sql: str) -> str:
    """fakesnow 0.12.1 only: `sum(x)` → `sum(cast(x as number(38, 12)))`. fakesnow wraps
    an aggregate's argument in `TRY_CAST(… AS DOUBLE)` unless it is a cast already
    (its `numeric_agg_implicit_cast`), so a sum of NUMBER(12,2) money comes back a
    float; real Snowflake sums NUMBER exactly, and this is never applied to it."""
    out: list[str] = []
    i = 0
    quote: str | None = None
    while i < len(sql):
        ch = sql[i]
        if quote:
            out.append(ch)
            if ch == quote:
                quote = None
            i += 1
            continue
        if ch in ("'", '"'):
            quote = ch
            out.append(ch)
            i += 1
            continue
        m = _SUM.match(sql, i)
        if m and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            depth, j, q = 1, m.end(), None
            while j < len(sql) and depth:
                c = sql[j]
                if q:
                    q = None if c == q else q
                elif c in ("'", '"'):
                    q = c
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                j += 1
            inner = sql[m.end() : j - 1]
            if depth or inner.strip() == "*" or inner.strip().lower().startswith("distinct"):
                out.append(sql[i : m.end()])
                i = m.end()
                continue
            out.append(f"sum(cast({exact_sums(inner)} as number(38, 12)))")
            i = j
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def split_statements(sql: str) -> list[str]:
    """`;`-separated statements (outside quotes), empty ones dropped."""
    parts: list[str] = []
    pos = 0
    for m in re.finditer(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|;", sql):
        if m.group(0) == ";":
            parts.append(sql[pos : m.start()])
            pos = m.end()
    parts.append(sql[pos:])
    return [p.strip() for p in parts if p.strip()]


def ident(name: str) -> str:
    """The quoted Snowflake identifier of `name`: all-lower-case plain names upper-cased
    (what the unquoted name resolves to), others kept as they are."""
    return quote_ident(name.upper() if _LOWER_PLAIN.match(name) else name)


def result_name(name: str) -> str:
    """A result/column name as the pipeline names it: upper-case plain → lower case."""
    return name.lower() if _UPPER_PLAIN.match(name) else name


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
    if pa.types.is_null(t):
        return "VARCHAR"
    raise WarehouseError(f"no Snowflake column type for Arrow type {t}")


# snowflake.connector.constants.FIELD_TYPES ids → Arrow (FIXED: by precision/scale)
_SF_TYPES: dict[int, pa.DataType] = {
    1: pa.float64(),  # REAL
    2: pa.string(),  # TEXT
    3: pa.date32(),  # DATE
    4: pa.timestamp("us"),  # TIMESTAMP (= NTZ)
    5: pa.string(),  # VARIANT
    6: pa.timestamp("us", tz="UTC"),  # TIMESTAMP_LTZ
    7: pa.timestamp("us", tz="UTC"),  # TIMESTAMP_TZ
    8: pa.timestamp("us"),  # TIMESTAMP_NTZ
    9: pa.string(),  # OBJECT
    10: pa.string(),  # ARRAY
    11: pa.binary(),  # BINARY
    12: pa.time64("us"),  # TIME
    13: pa.bool_(),  # BOOLEAN
}


def _sf_to_arrow(type_code: int, precision: int | None, scale: int | None) -> pa.DataType:
    if type_code == 0:  # FIXED
        if not scale:
            return pa.int64()
        return pa.decimal128(int(precision or 38), int(scale))
    return _SF_TYPES.get(type_code, pa.string())


def _normalise_arrow(table: pa.Table, names: list[str]) -> pa.Table:
    """Result columns renamed (`result_name`); the connector's narrow integers (it sizes
    NUMBER(38,0) per batch) widened to int64, timestamps to microseconds."""
    fields = []
    for f, name in zip(table.schema, names, strict=True):
        t = f.type
        if pa.types.is_integer(t):
            t = pa.int64()
        elif pa.types.is_timestamp(t) and t.unit != "us":
            t = pa.timestamp("us", tz=t.tz)
        elif pa.types.is_decimal(t) and t.scale == 0 and t.precision <= 18:
            t = pa.int64()
        fields.append(pa.field(result_name(name), t))
    return table.rename_columns([f.name for f in fields]).cast(pa.schema(fields))


def connect_kwargs(url: str) -> dict[str, Any]:
    """snowflake.connector.connect(**kwargs) from `snowflake://user:password@<account or
    host[:port]>/<database>[/<schema>]?account=…&warehouse=…&role=…&protocol=…`.

    The host is the account (`<account>.snowflakecomputing.com`) unless `account=` is
    given, then it is a host (fakesnow: `127.0.0.1:<port>?account=fakesnow&protocol=http`).
    `emulator=` is not a connection option (`url_emulator`)."""
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
    query.pop("emulator", None)  # url_emulator's
    if "network_timeout" in query:
        kwargs["network_timeout"] = int(query.pop("network_timeout"))
    if query:
        raise WarehouseError(f"unknown snowflake:// URL options: {', '.join(sorted(query))}")
    if not kwargs.get("database"):
        raise WarehouseError("snowflake:// URL names no database (snowflake://…/<database>)")
    return kwargs


def url_emulator(url: str) -> str | None:
    """The URL's `emulator=` option (`fakesnow`: the emulator paths), None when absent."""
    value = dict(parse_qsl(urlsplit(url).query)).get("emulator") or None
    if value not in EMULATORS:
        raise WarehouseError(f"unknown snowflake:// emulator={value!r} (known: fakesnow)")
    return value


class _Cursor:
    """A connector cursor whose `execute` runs `snowflake_sql(sql)` with `?` params."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        self._cur.execute(snowflake_sql(sql), list(params) if params else None)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


# Statements Snowflake runs in a transaction of their own, committing the open one first
_DDL = re.compile(r"^\s*(create|alter|drop|truncate|undrop|comment|grant|revoke|put)\b", re.I)


def physical_name(name: str) -> str:
    """The physical (catalog) name of an identifier, as information_schema lists it."""
    return name.upper() if _LOWER_PLAIN.match(name) else name


class SnowflakeSession:
    """`base.Session` on one Snowflake connection inside `begin` … `commit` (DDL commits
    on its own: see the module docstring). `?` placeholders are the connector's `qmark`
    paramstyle (bound on the server); every statement goes through `snowflake_sql`."""

    kind = "snowflake"

    def __init__(
        self,
        con: Any,
        schemas: dict[str, str],
        *,
        in_transaction: bool = False,
        emulator: str | None = None,
    ) -> None:
        self.con = con
        self.schemas = schemas
        self.in_transaction = in_transaction
        self.emulator = emulator

    def _cursor(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self.con.cursor()
        ddl = self.in_transaction and _DDL.match(sql) is not None
        if ddl:  # what Snowflake does implicitly, done in the open (fakesnow needs it)
            cur.execute("commit")
        text = snowflake_sql(substitute_schemas(sql, self.schemas))
        if self.emulator == "fakesnow":
            text = exact_sums(text)
        cur.execute(text, list(params) if params else None)
        if ddl:
            self.con.cursor().execute("begin")
        return cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        statements = split_statements(sql) if not params else [sql]
        affected = 0
        for statement in statements:
            affected = max(self._cursor(statement, params).rowcount or 0, 0)
        return affected if len(statements) == 1 else 0

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self._cursor(sql, params).fetchone()

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return list(self._cursor(sql, params).fetchall())

    def table(self, schema: str, table: str) -> str:
        return f"{ident(self.schemas.get(schema, schema))}.{ident(table)}"

    def exists(self, schema: str, table: str) -> bool:
        row = self.fetchone(
            "select count(*) from information_schema.tables "
            "where table_schema = ? and table_name = ?",
            [physical_name(self.schemas.get(schema, schema)), physical_name(table)],
        )
        return bool(row and row[0])

    def table_columns(self, relation: str) -> dict[str, pa.DataType]:
        cur = self._cursor(f"select * from {relation} limit 0")
        return {
            result_name(d.name): _sf_to_arrow(d.type_code, d.precision, d.scale)
            for d in cur.description or []
        }

    def column_type(self, type_: pa.DataType) -> str:
        return _arrow_to_snowflake(type_)

    def add_column(self, relation: str, name: str, type_: pa.DataType) -> None:
        self.execute(
            f"alter table {relation} add column {ident(name)} {_arrow_to_snowflake(type_)}"
        )

    def widen_column(self, relation: str, name: str, type_: pa.DataType) -> None:
        """`ALTER COLUMN … SET DATA TYPE` (Snowflake widens NUMBER precision and VARCHAR
        length in place; other changes it refuses, and the load fails naming them)."""
        self.execute(
            f"alter table {relation} alter column {ident(name)} "
            f"set data type {_arrow_to_snowflake(type_)}"
        )

    def _put(self, files: Sequence[Path]) -> str:
        """`PUT` the files into a fresh folder of the session's temporary stage (no
        compression: Parquet is compressed already); the folder."""
        self._cursor("create temporary stage if not exists NS_LOAD")
        folder = f"NS_LOAD/{secrets.token_hex(6)}"
        for path in files:
            uri = Path(path).resolve().as_uri()
            self._cursor(f"put '{uri}' @{folder} AUTO_COMPRESS = FALSE OVERWRITE = TRUE")
        return folder

    def _copy(self, relation: str, folder: str) -> int:
        """`COPY INTO <relation> FROM @<folder>` (Parquet, columns matched by name case-
        insensitively, a column the files lack NULL); rows loaded."""
        cur = self._cursor(
            f"copy into {relation} from @{folder} "
            "FILE_FORMAT = (TYPE = PARQUET USE_LOGICAL_TYPE = TRUE) "
            "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE ON_ERROR = ABORT_STATEMENT PURGE = TRUE"
        )
        names = [d.name.lower() for d in cur.description or []]
        rows = cur.fetchall()
        if "rows_loaded" not in names:  # "Copy executed with 0 files processed."
            return 0
        i = names.index("rows_loaded")
        return sum(int(r[i] or 0) for r in rows)

    def _drop_temp(self, name: str) -> None:
        self.execute(f"drop table if exists {ident(name)}")

    def stage_parquet(
        self, name: str, directories: Sequence[Path], *, union_by_name: bool = True
    ) -> list[str]:
        """A temporary table of the files' (unified) columns, filled by `PUT` + `COPY INTO`."""
        files = parquet_files(directories)
        if not files:
            raise WarehouseError(f"no Parquet files in {', '.join(map(str, directories))}")
        schemas = [pq.read_schema(f).remove_metadata() for f in files]
        if union_by_name:
            unified = pa.unify_schemas(schemas)
        else:
            unified = schemas[0]
            for f, sc in zip(files, schemas, strict=True):
                if sc.names != unified.names:
                    raise WarehouseError(f"{f}: columns differ from {files[0]}")
        self._drop_temp(name)
        columns = ", ".join(f"{ident(f.name)} {_arrow_to_snowflake(f.type)}" for f in unified)
        if self.emulator != "fakesnow":
            self.execute(f"create temporary table {ident(name)} ({columns})")
            self._copy(ident(name), self._put(files))
            return unified.names
        # fakesnow 0.12.1 looks the COPY INTO target up in the current schema, where a
        # temporary table is not (DuckDB keeps it in its temp catalog): COPY into a
        # transient table, then the temporary table from it
        transient = ident(f"ns_copy_{secrets.token_hex(4)}")
        self.execute(f"create transient table {transient} ({columns})")
        try:
            self._copy(transient, self._put(files))
            self.execute(f"create temporary table {ident(name)} as select * from {transient}")
        finally:
            self.execute(f"drop table if exists {transient}")
        return unified.names

    def create_temp(
        self, name: str, select_sql: str, params: Sequence[Any] = (), *, columns: str = ""
    ) -> None:
        self._drop_temp(name)
        if columns:
            self.execute(f"create temporary table {ident(name)} ({columns})")
        else:
            self._cursor(f"create temporary table {ident(name)} as {select_sql}", params)

    def dedupe(
        self,
        name: str,
        source: str,
        columns: Sequence[str],
        keys: Sequence[str],
        cursor: str | None,
    ) -> None:
        key_cols = ", ".join(ident(k) for k in keys)
        order = f"{ident(cursor)} desc nulls last" if cursor else key_cols
        self.create_temp(
            name,
            f"select * from {source} "
            f"qualify row_number() over (partition by {key_cols} order by {order}) = 1",
        )

    def days_interval(self, expr: str) -> str:
        """Not a Snowflake interval (they take no expressions): the guard's
        `now() - <days>` needs `dateadd` instead; see docs/warehouse-backends.md."""
        raise WarehouseError(
            "the mass-delete guard's max_age_days is not supported on the Snowflake "
            "warehouse yet (docs/warehouse-backends.md)"
        )

    def read_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """`fetch_arrow_all` (Snowflake's Arrow result batches); names lower-cased
        (`result_name`), integers int64."""
        cur = self._cursor(sql, params)
        names = [d.name for d in cur.description or []]
        table = cur.fetch_arrow_all(force_return_table=True)
        if table is None or table.num_columns != len(names):
            raise WarehouseError(f"snowflake: no Arrow result for {sql[:80]!r}")
        return _normalise_arrow(table, names)

    def insert_arrow(self, relation: str, data: pa.Table) -> int:
        """The rows as one Parquet file, `PUT` + `COPY INTO` (columns by name)."""
        if data.num_rows == 0:
            return 0
        with tempfile.TemporaryDirectory(prefix="nightshift-arrow-") as tmp:
            path = Path(tmp) / "rows.parquet"
            pq.write_table(data, path)
            if self.emulator != "fakesnow":
                return self._copy(relation, self._put([path]))
            # fakesnow 0.12.1 cannot COPY INTO a temporary table (see stage_parquet)
            transient = ident(f"ns_copy_{secrets.token_hex(4)}")
            columns = ", ".join(
                f"{ident(f.name)} {_arrow_to_snowflake(f.type)}" for f in data.schema
            )
            names = ", ".join(ident(n) for n in data.column_names)
            self.execute(f"create transient table {transient} ({columns})")
            try:
                self._copy(transient, self._put([path]))
                return self.execute(
                    f"insert into {relation} ({names}) select {names} from {transient}"
                )
            finally:
                self.execute(f"drop table if exists {transient}")


class SnowflakeWarehouse(SessionColumns):
    """A warehouse in one Snowflake database (`AIRFLOW_CONN_WAREHOUSE=snowflake://…`)."""

    kind = "snowflake"
    paramstyle = "qmark"

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
        self.url = url
        self.connection = dict(connection) if connection is not None else connect_kwargs(url)
        if emulator is None and url is not None:
            emulator = url_emulator(url)
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
        """A connection (`qmark` paramstyle, autocommit) with the database in use and the
        session in UTC."""
        try:
            import snowflake.connector
        except ImportError:
            raise WarehouseError(INSTALL_HINT) from None
        kwargs = {k: v for k, v in self.connection.items() if k != "database"}
        kwargs["paramstyle"] = "qmark"
        # NUMBER(p,s) rows as Decimal, not float (the gates compare money exactly)
        kwargs["arrow_number_to_decimal"] = True
        try:
            con = snowflake.connector.connect(**kwargs)
            cur = con.cursor()
            cur.execute(f"create database if not exists {ident(self.database)}")
            cur.execute(f"use database {ident(self.database)}")
            if not self.emulator:
                cur.execute("alter session set TIMEZONE = 'UTC'")
            # a schema in use: temporary tables and stages live there (and fakesnow's
            # MERGE makes a helper table in it)
            cur.execute("create schema if not exists PUBLIC")
            cur.execute("use schema PUBLIC")
        except snowflake.connector.errors.Error as exc:
            raise WarehouseError(f"cannot connect to {self.describe()}: {exc}") from None
        return con

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        con = self.connect()
        try:
            yield _Cursor(con.cursor())
        finally:
            con.close()

    def _mapping(self, build: Build | None) -> dict[str, str]:
        if build is None:
            return {s: s for s in self.schemas}
        return dict(build.schemas)

    def _table(self, build: Build, schema: str, table: str) -> str:
        return f"{ident(build.schema(schema))}.{ident(table)}"

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
                cur.execute(f"create schema if not exists {ident(s)}")
        self._control_ready = True

    def generation(self) -> int:
        self._ensure_control()
        with self._cursor() as cur:
            cur.execute(f"select GENERATION from {quote_ident(self.control)}.PUBLISH_STATE")
            return int(cur.fetchone()[0])

    # -- reads and bookkeeping -------------------------------------------------------

    @contextmanager
    def transaction(self, build: Build | None = None) -> Iterator[SnowflakeSession]:
        """One transaction on the build's schemas, or on the published ones when `build`
        is None: `BEGIN`, `COMMIT` when the block ends, `ROLLBACK` on an exception."""
        self._ensure_control()
        con = self.connect()
        try:
            con.cursor().execute("begin")
            try:
                yield SnowflakeSession(
                    con, self._mapping(build), in_transaction=True, emulator=self.emulator
                )
            except BaseException:
                con.cursor().execute("rollback")
                raise
            con.cursor().execute("commit")
        finally:
            con.close()

    def read_arrow(
        self, sql: str, params: Sequence[Any] = (), *, build: Build | None = None
    ) -> pa.Table:
        """`cursor.fetch_arrow_all()` (Snowflake's Arrow result batches); upper-case
        result columns renamed to lower case."""
        con = self.connect()
        try:
            return SnowflakeSession(con, self._mapping(build), emulator=self.emulator).read_arrow(
                sql, params
            )
        finally:
            con.close()

    def execute(self, sql: str, params: Sequence[Any] = (), *, build: Build | None = None) -> int:
        con = self.connect()
        try:
            return SnowflakeSession(con, self._mapping(build), emulator=self.emulator).execute(
                sql, params
            )
        finally:
            con.close()

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

    def _token(self, run_id: str) -> str:
        """Lower case (dbt's schema suffix `__build_<token>` is folded by Snowflake)."""
        stem = _TOKEN_RE.sub("_", run_id.lower()).strip("_")[:20] or "run"
        return f"{stem}_{secrets.token_hex(3)}"

    def _build_schemas(self, token: str) -> dict[str, str]:
        """`<s>__build_<token>` (physical `<S>__BUILD_<TOKEN>`), dbt's names for it."""
        return {s: f"{s}__build_{token}" for s in self.schemas}

    def _tables(self, cur: Any, schema: str) -> list[str]:
        cur.execute(
            "select table_name from information_schema.tables "
            "where table_schema = ? and table_type in ('BASE TABLE', 'TABLE') order by 1",
            (physical_name(schema),),
        )
        return [r[0] for r in cur.fetchall()]

    def _drop_run_builds(self, cur: Any, run_id: str) -> None:
        c = quote_ident(self.control)
        cur.execute(f"select TOKEN from {c}.BUILDS where RUN_ID = ?", (run_id,))
        for (token,) in cur.fetchall():
            for b in self._build_schemas(token).values():
                cur.execute(f"drop schema if exists {ident(b)} cascade")
        cur.execute(f"delete from {c}.BUILDS where RUN_ID = ?", (run_id,))

    def begin_build(self, run_id: str) -> Build:
        """Real Snowflake: `CREATE SCHEMA <s>__BUILD_<token> CLONE <s>` for every
        published schema (zero-copy; one statement each, so the schemas are cloned at
        slightly different moments: a publish between two of them is caught by the
        generation check of `publish`). An earlier attempt of the run is dropped first."""
        self._ensure_control()
        token = self._token(run_id)
        c = quote_ident(self.control)
        started = time.perf_counter()
        with self._cursor() as cur:
            self._drop_run_builds(cur, run_id)
            cur.execute(f"select GENERATION from {c}.PUBLISH_STATE")
            base = int(cur.fetchone()[0])
            schemas = self._build_schemas(token)
            cur.execute(
                f"insert into {c}.BUILDS (TOKEN, RUN_ID, BASE_GENERATION, STARTED_AT) "
                "values (?, ?, ?, current_timestamp())",
                (token, run_id, base),
            )
            if self.emulator:
                self._begin_build_emulated(cur, schemas)
            else:
                for s, b in schemas.items():
                    cur.execute(f"create schema {ident(b)} clone {ident(s)}")
        log.info("build %s of generation %s in %.2fs", token, base, time.perf_counter() - started)
        return Build(backend=self.kind, run_id=run_id, token=token, base=base, schemas=schemas)

    def _begin_build_emulated(self, cur: Any, schemas: dict[str, str]) -> None:
        """fakesnow: no `CREATE SCHEMA … CLONE`; a new schema and one
        `CREATE TABLE … CLONE` per table (fakesnow copies the rows)."""
        for s, b in schemas.items():
            cur.execute(f"create schema {ident(b)}")
            for t in self._tables(cur, s):
                cur.execute(
                    f"create table {ident(b)}.{quote_ident(t)} clone {ident(s)}.{quote_ident(t)}"
                )

    def open_build(self, run_id: str) -> Build | None:
        """The newest build `begin_build(run_id)` recorded (the later tasks of a run run in
        other processes), or None."""
        self._ensure_control()
        with self._cursor() as cur:
            cur.execute(
                f"select TOKEN, BASE_GENERATION from {quote_ident(self.control)}.BUILDS "
                "where RUN_ID = ? order by STARTED_AT desc limit 1",
                (run_id,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        token, base = row
        return Build(
            backend=self.kind,
            run_id=run_id,
            token=token,
            base=int(base),
            schemas=self._build_schemas(token),
        )

    def _check_build(self, cur: Any, build: Build) -> None:
        cur.execute(
            f"select count(*) from {quote_ident(self.control)}.BUILDS where TOKEN = ?",
            (build.token,),
        )
        if cur.fetchone()[0] == 0:
            raise BuildNotFoundError(
                f"build {build.token} of run {build.run_id} is gone (abandoned, or replaced "
                f"by a newer attempt of the run) on {self.describe()}: nothing to publish"
            )

    def publish(
        self,
        build: Build,
        *,
        check_lease: Callable[[], None] | None = None,
        version: str | None = None,
        keep: int = 0,
    ) -> float:
        """1. the build must be recorded; 2. the lease check; 3. claim the publish:
        `UPDATE PUBLISH_STATE SET GENERATION = GENERATION + 1 … WHERE GENERATION = <base>`
        (0 rows: PublishConflictError), committed; 4. real Snowflake:
        `ALTER SCHEMA <s>__BUILD_<token> SWAP WITH <s>` for every schema, then
        `DROP SCHEMA <s>__BUILD_<token>` (the old state after the swap).

        Every SWAP is DDL and commits on its own: a reader's query between two swaps can
        join a new `raw` with an old `analytics` (milliseconds wide, but not atomic as
        the PostgreSQL publish is). The fix the docs plan is one database per build
        (`CREATE DATABASE … CLONE`, one `ALTER DATABASE … SWAP WITH`).
        `version`/`keep`: published versions are a DuckDB-file feature (make rollback);
        Snowflake's own is Time Travel, so they are ignored here."""
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
                "PUBLISHED_AT = current_timestamp(), RUN_ID = ? where GENERATION = ?",
                (build.run_id, build.base),
            )
            claimed = cur.rowcount
            if not claimed:
                cur.execute("rollback")
                cur.execute(f"select RUN_ID, GENERATION from {c}.PUBLISH_STATE")
                other, generation = cur.fetchone()
                raise PublishConflictError(
                    f"not published: {self.describe()}: run {other} published since build "
                    f"{build.token} began (base generation {build.base}, now {generation}); "
                    "this build would revert that publish. Rerun the day."
                )
            cur.execute(f"delete from {c}.BUILDS where TOKEN = ?", (build.token,))
            cur.execute("commit")
            if self.emulator:
                self._publish_emulated(cur, build)
                seconds = time.monotonic() - started
            else:
                for s in self.schemas:
                    cur.execute(f"alter schema {ident(build.schema(s))} swap with {ident(s)}")
                seconds = time.monotonic() - started
                for s in self.schemas:
                    cur.execute(f"drop schema if exists {ident(build.schema(s))} cascade")
        log.info("published build %s of run %s in %.4fs", build.token, build.run_id, seconds)
        return seconds

    def _publish_emulated(self, cur: Any, build: Build) -> None:
        """fakesnow: no SWAP WITH, no schema rename: each published table is replaced by
        `DROP TABLE <s>.<t>` + `CREATE TABLE <s>.<t> CLONE <build>.<t>` and tables the
        build dropped are dropped. Not atomic; the emulated test's readers run after it."""
        for s in self.schemas:
            pub, b = ident(s), ident(build.schema(s))
            new = self._tables(cur, build.schema(s))
            for t in new:
                # fakesnow 0.12.1 turns CLONE into CTAS and ignores OR REPLACE: drop first
                cur.execute(f"drop table if exists {pub}.{quote_ident(t)}")
                cur.execute(f"create table {pub}.{quote_ident(t)} clone {b}.{quote_ident(t)}")
            for t in set(self._tables(cur, s)) - set(new):
                cur.execute(f"drop table {pub}.{quote_ident(t)}")
            cur.execute(f"drop schema if exists {b} cascade")

    def abandon_build(self, build: Build) -> None:
        """`DROP SCHEMA … CASCADE` of the build's schemas and its record."""
        self._ensure_control()
        with self._cursor() as cur:
            for s in self.schemas:
                cur.execute(f"drop schema if exists {ident(build.schema(s))} cascade")
            cur.execute(
                f"delete from {quote_ident(self.control)}.BUILDS where TOKEN = ?", (build.token,)
            )

    def lease_backend(self) -> SnowflakeLease:
        self._ensure_control()
        return SnowflakeLease(self)


class SnowflakeLease(RowLease):
    """`warehouse.lease.LeaseBackend` of a Snowflake warehouse: one row of
    `NIGHTSHIFT_CONTROL.LEASE` (the lease as JSON text), the same semantics as
    `PostgresLease`. Snowflake has no `SELECT … FOR UPDATE`: every method is one
    transaction that first updates the row to itself (`UPDATE … SET ID = ID`), which
    holds the row's lock until the commit, so two runs' read-modify-writes serialise.
    (fakesnow, on DuckDB, refuses the second writer with a conflict instead of waiting.)"""

    name = "snowflake"

    def __init__(self, warehouse: SnowflakeWarehouse) -> None:
        self.warehouse = warehouse
        self.table = f"{quote_ident(warehouse.control)}.LEASE"
        with warehouse._cursor() as cur:
            cur.execute(f"create table if not exists {self.table} (ID NUMBER(1,0), LEASE VARCHAR)")
            cur.execute(f"select count(*) from {self.table} where ID = 1")
            if cur.fetchone()[0] == 0:
                cur.execute(f"insert into {self.table} (ID, LEASE) values (1, null)")

    @contextmanager
    def _locked(self) -> Iterator[tuple[Any, Lease | None]]:
        with self.warehouse._cursor() as cur:
            cur.execute("begin")
            try:
                cur.execute(f"update {self.table} set ID = ID where ID = 1")
                cur.execute(f"select LEASE from {self.table} where ID = 1")
                row = cur.fetchone()
                yield cur, Lease.from_dict(json.loads(row[0])) if row and row[0] else None
            except BaseException:
                cur.execute("rollback")
                raise
            cur.execute("commit")

    def _write(self, cur: Any, lease: Lease | None) -> None:
        value = json.dumps(asdict(lease), sort_keys=True) if lease is not None else None
        cur.execute(f"update {self.table} set LEASE = ? where ID = 1", (value,))
