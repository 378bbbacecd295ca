"""Extract the operational tables from any SQLAlchemy URL into the landing zone.

Foundation design: a full extract of every table, all read in one snapshot transaction
(REPEATABLE READ where the database has it) so that orders and their items agree, and
streamed in batches so memory stays bounded whatever the table size.
Types are kept exact: NUMERIC stays decimal, timestamps become UTC.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from extract.landing import write_landing_table
from pipeline.settings import sqlalchemy_url

log = logging.getLogger(__name__)

SOURCE_NAME = "source_db"


@dataclass(frozen=True)
class TableSpec:
    """What to extract from one source table."""

    name: str
    key: str = "id"
    cursor: str = "updated_at"
    required_columns: tuple[str, ...] = ()


SOURCE_TABLES: tuple[TableSpec, ...] = (
    TableSpec("users", required_columns=("id", "region", "updated_at")),
    TableSpec("products", required_columns=("id", "category", "updated_at")),
    TableSpec(
        "orders",
        required_columns=(
            "id",
            "user_id",
            "status",
            "currency",
            "total",
            "created_at",
            "updated_at",
        ),
    ),
    TableSpec(
        "order_items",
        required_columns=("id", "order_id", "product_id", "quantity", "unit_price", "updated_at"),
    ),
)


class SchemaError(RuntimeError):
    """The source table does not have a column the pipeline needs."""


def arrow_type(sa_type: sa.types.TypeEngine) -> pa.DataType:
    """Map a reflected SQLAlchemy column type to the exact Arrow type we land."""
    if isinstance(sa_type, sa.Boolean):
        return pa.bool_()
    if isinstance(sa_type, sa.Integer):
        return pa.int64()
    if isinstance(sa_type, sa.Float):
        return pa.float64()
    if isinstance(sa_type, sa.Numeric):
        precision = sa_type.precision or 38
        scale = sa_type.scale if sa_type.scale is not None else 10
        return pa.decimal128(min(max(precision, scale + 1), 38), scale)
    if isinstance(sa_type, sa.DateTime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(sa_type, sa.Date):
        return pa.date32()
    return pa.string()


def _to_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        value = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:  # the contract: source timestamps are UTC
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _converter(arrow: pa.DataType):
    if pa.types.is_timestamp(arrow):
        return _to_utc
    if pa.types.is_decimal(arrow):
        scale = arrow.scale
        quantum = Decimal(1).scaleb(-scale)

        def to_decimal(v: Any) -> Decimal | None:
            if v is None:
                return None
            d = v if isinstance(v, Decimal) else Decimal(str(v))
            q = d.quantize(quantum)
            if q != d:
                raise ValueError(f"value {v!r} does not fit scale {scale}")
            return q

        return to_decimal
    if pa.types.is_string(arrow):
        return lambda v: None if v is None else str(v)
    if pa.types.is_date(arrow):
        return lambda v: None if v is None else (v.date() if isinstance(v, datetime) else v)
    return lambda v: v


def _batches(
    conn: sa.Connection,
    table: sa.Table,
    schema: pa.Schema,
    batch_size: int,
    key: str,
) -> Iterator[pa.RecordBatch]:
    is_sqlite = conn.dialect.name == "sqlite"
    columns = []
    for col in table.columns:
        # SQLite stores timestamps as text in many formats: read text, parse ourselves.
        if is_sqlite and isinstance(col.type, sa.DateTime | sa.Date):
            columns.append(sa.type_coerce(col, sa.String).label(col.name))
        else:
            columns.append(col)
    stmt = sa.select(*columns).order_by(table.c[key])
    converters = [_converter(f.type) for f in schema]
    result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(stmt)
    for rows in result.partitions(batch_size):
        arrays = []
        for i, field in enumerate(schema):
            convert = converters[i]
            try:
                values = [convert(r[i]) for r in rows]
            except (ValueError, TypeError, ArithmeticError) as exc:
                bad = next(r for r in rows if _fails(convert, r[i]))
                raise ValueError(
                    f"{table.name}.{field.name}: cannot convert value {bad[i]!r} "
                    f"of row {key}={bad[schema.get_field_index(key)]}: {exc}"
                ) from exc
            arrays.append(pa.array(values, type=field.type))
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _fails(convert, value) -> bool:
    try:
        convert(value)
        return False
    except Exception:
        return True


def extract_tables(
    url: str,
    *,
    run_id: str,
    landing_root: Path,
    tables: Sequence[TableSpec] = SOURCE_TABLES,
    batch_size: int = 50_000,
) -> dict[str, dict[str, Any]]:
    """Full extract of `tables` in one consistent snapshot; return a manifest per table."""
    engine = sa.create_engine(sqlalchemy_url(url))
    manifests: dict[str, dict[str, Any]] = {}
    try:
        isolation = (
            {"isolation_level": "REPEATABLE READ"}
            if engine.dialect.name
            in (
                "postgresql",
                "mysql",
                "mariadb",
            )
            else {}
        )
        with engine.connect().execution_options(**isolation) as conn, conn.begin():
            metadata = sa.MetaData()
            for spec in tables:
                try:
                    table = sa.Table(spec.name, metadata, autoload_with=conn)
                except sa.exc.NoSuchTableError as exc:
                    raise SchemaError(f"source table {spec.name!r} does not exist") from exc
                missing = [c for c in spec.required_columns if c not in table.c]
                if missing:
                    raise SchemaError(
                        f"source table {spec.name!r} lacks required column(s) "
                        f"{', '.join(missing)}; it has {', '.join(table.c.keys())}"
                    )
                schema = pa.schema([pa.field(c.name, arrow_type(c.type)) for c in table.columns])
                manifest = write_landing_table(
                    _batches(conn, table, schema, batch_size, spec.key),
                    schema=schema,
                    landing_root=landing_root,
                    source=SOURCE_NAME,
                    table_name=spec.name,
                    run_id=run_id,
                    cursor_column=spec.cursor,
                    extra_manifest={"mode": "full_refresh", "key": spec.key},
                )
                log.info(
                    "extracted %s.%s: %d rows, %d bytes",
                    SOURCE_NAME,
                    spec.name,
                    manifest["rows"],
                    manifest["bytes"],
                )
                manifests[spec.name] = manifest
    finally:
        engine.dispose()
    return manifests
