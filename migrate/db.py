"""Engines and reflection for both sides of a migration (any SQLAlchemy URL).

SQLite engines may be used from the verifier's worker threads (one connection per side,
never two threads at once), so `check_same_thread` is off; a busy timeout lets the
demo's application threads, the backfill and the verifier share one SQLite file.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.settings import sqlalchemy_url
from migrate.mapping import MappingError, to_cents

P = TypeVar("P")  # a plan dataclass (plan_or_fields)

NEW_SCHEMA_SQL = Path(__file__).resolve().parent / "new_schema.sql"


def make_engine(url: str) -> Engine:
    """An engine for an SQLAlchemy or Airflow-style URL (`postgres://` is accepted)."""
    url = sqlalchemy_url(url)
    if sa.make_url(url).get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_functions)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def safe_url(engine: Engine) -> str:
    """The URL for logs and messages, password hidden."""
    return engine.url.render_as_string(hide_password=True)


def reflect_table(engine: Engine, name: str) -> sa.Table:
    """The table as the database has it; a clear error when it does not exist."""
    try:
        return sa.Table(name, sa.MetaData(), autoload_with=engine)
    except sa.exc.NoSuchTableError as exc:
        raise MappingError(f"table {name!r} does not exist in {safe_url(engine)}") from exc


def exact_columns(table: sa.Table, names: list[str] | None = None) -> list[sa.ColumnElement]:
    """The columns to select, money read exactly: SQLAlchemy would round a SQLite REAL
    to the declared scale (12.345 → 12.35) and hide a value the mapping must refuse."""
    out: list[sa.ColumnElement] = []
    for col in table.columns if names is None else [table.c[n] for n in names]:
        if isinstance(col.type, sa.Numeric) and not isinstance(col.type, sa.Float):
            exact = sa.Numeric(asdecimal=True, decimal_return_scale=10)
            out.append(sa.type_coerce(col, exact).label(col.name))
        else:
            out.append(col)
    return out


def require_columns(table: sa.Table, names: list[str], engine: Engine) -> None:
    """Every mapped column exists (named in the error otherwise)."""
    missing = [n for n in names if n not in table.c]
    if missing:
        raise MappingError(
            f"table {table.name!r} in {safe_url(engine)} has no column(s) {', '.join(missing)}"
        )


def apply_new_schema(engine: Engine, ddl_path: Path = NEW_SCHEMA_SQL) -> None:
    """Create the new schema's tables (idempotent DDL), in one transaction."""
    lines = [ln for ln in ddl_path.read_text().splitlines() if not ln.strip().startswith("--")]
    statements = [s.strip() for s in "\n".join(lines).split(";")]
    with engine.begin() as conn:
        for statement in statements:
            if statement:
                conn.exec_driver_sql(statement)


# SQLite has no md5 and stores timestamps as text and money as REAL: these functions,
# registered on every SQLite connection, give the verifier the same canonical values
# and hashes that PostgreSQL computes natively (SQLite runs in-process, so this is
# still "in the database", not rows shipped to the verifier).


def _md5_16(text: str | None) -> str | None:
    return None if text is None else hashlib.md5(text.encode()).hexdigest()[:16]


def _h60(text: str | None) -> int | None:
    return None if text is None else int(hashlib.md5(text.encode()).hexdigest()[:15], 16)


def _epoch(value: Any) -> str | None:
    """Timestamp text (naive = UTC) → epoch seconds with 6 decimals, exactly as
    PostgreSQL prints `extract(epoch from x)` ('1767225600.120000', '-1.500000')."""
    if value is None:
        return None
    ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    sign, micros = ("-" if micros < 0 else ""), abs(micros)
    return f"{sign}{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _num(value: Any) -> str | None:
    """A numeric as PostgreSQL's trim_scale(x)::text prints it ('12.3', '100', '0')."""
    if value is None:
        return None
    return format(Decimal(str(value)).normalize(), "f")


def _cents(value: Any) -> str | None:
    """Cents as text; a value that is not whole cents compares unequal, never raises."""
    if value is None:
        return None
    try:
        return str(to_cents(value, where="value"))
    except MappingError:
        return f"not cents: {value}"


class _HashSum:
    """sum() of 60-bit hashes as a Python int (SQLite's sum() overflows at 2**63)."""

    def __init__(self) -> None:
        self.total = 0

    def step(self, value: int | None) -> None:
        if value is not None:
            self.total += value

    def finalize(self) -> str:
        return str(self.total)  # as text: SQLite integers stop at 2**63


def _sqlite_functions(dbapi_conn: Any, _record: Any) -> None:
    for name, fn in (
        ("ns_md5_16", _md5_16),
        ("ns_h60", _h60),
        ("ns_epoch", _epoch),
        ("ns_num", _num),
        ("ns_cents", _cents),
    ):
        dbapi_conn.create_function(name, 1, fn, deterministic=True)
    dbapi_conn.create_aggregate("ns_hsum", 1, _HashSum)


def plan_or_fields(plan_type: type[P], plan: P | None, fields: dict[str, Any], caller: str) -> P:
    """`plan`, or a `plan_type` of the keyword `fields` a caller passed instead (the old
    keyword form); TypeError for both, or for a name that is not a field."""
    if plan is None:
        return plan_type(**fields)
    if fields:
        raise TypeError(f"{caller}: give a plan or its fields, not both: {sorted(fields)}")
    return plan
