"""One row filter, two readers: the binary COPY reader (values rendered by the driver
from `driver_filter`) keeps exactly the rows the generic reader's bound filter keeps, on
a real PostgreSQL, with the shapes the extract builds: a `%` modulus, a `::` cast, a
bigint key beyond 32 bits and timestamptz / naive timestamp bounds."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import sqlalchemy as sa

from extract.db_extract import ReadRequest, _window_where, auto_read_batches, read_batches
from extract.shards import shard_predicate
from extract.sql_binds import driver_filter

BIG = 5_000_000_000  # beyond int32: a bind rendered as `::INTEGER` would refuse it


def _source(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "create table events (id bigint primary key, note text, "
                "updated_at timestamptz, seen_at timestamp)"
            )
        )
        rows = [
            {
                "id": BIG + i if i % 3 == 0 else i,
                "note": f"{i}% done" if i % 4 else None,
                "updated_at": datetime(2026, 11, 20, i % 24, tzinfo=UTC),
                "seen_at": datetime(2026, 11, 20, (i * 5) % 24),
            }
            for i in range(200)
        ]
        conn.execute(sa.text("insert into events values (:id, :note, :updated_at, :seen_at)"), rows)
    return engine


def _ids(reader, conn: sa.Connection, where: str, params: dict) -> list[int]:
    table = sa.Table("events", sa.MetaData(), autoload_with=conn)
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("note", pa.string())])
    batches = list(reader(conn, ReadRequest(table, schema, where, params, 50)))
    return sorted(i for b in batches for i in b.column(0).to_pylist())


def test_copy_reader_keeps_exactly_the_rows_of_the_bound_filter(pg_database: str) -> None:
    engine = _source(pg_database)
    try:
        with engine.connect() as conn:
            table = sa.Table("events", sa.MetaData(), autoload_with=conn)
            lo, hi = datetime(2026, 11, 20, 5, tzinfo=UTC), datetime(2026, 11, 20, 17, tzinfo=UTC)
            window, window_params = _window_where(conn, table.c.updated_at, lo, hi)
            shard, shard_params = shard_predicate("id", [(0, 400), (700, 1023)], "postgresql")
            where = (
                f"{shard} and {window} and (note is null or note::text like '% done' "
                "or seen_at <= :seen)"
            )
            params = {**window_params, **shard_params, "seen": datetime(2026, 11, 20, 9)}
            expected = _ids(read_batches, conn, where, params)
            assert 20 < len(expected) < 200  # the filter keeps some rows, not all
            assert any(i >= BIG for i in expected)
            assert _ids(auto_read_batches, conn, where, params) == expected
            sql, binds = driver_filter(where, params)
            assert ":" + "vs_lo_0" not in sql and "%(vs_lo_0)s" in sql and "::INTEGER" not in sql
            assert binds == params
    finally:
        engine.dispose()


def test_no_filter_is_empty() -> None:
    assert driver_filter(None, {}) == ("", {})
    assert driver_filter("", {"x": 1}) == ("", {})
