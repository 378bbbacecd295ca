"""The PostgreSQL fast path lands exactly what a plain SQLAlchemy select reads."""

from __future__ import annotations

import random
import re
import threading
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from extract.pg_copy import connect, render_where, stream_pg_batches

TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("i4", pa.int64()),
        ("i2", pa.int64()),
        ("money", pa.decimal128(12, 2)),
        ("wide", pa.decimal128(30, 8)),
        ("free", pa.decimal128(38, 10)),
        ("ts", TS),
        ("naive", TS),
        ("day", pa.date32()),
        ("txt", pa.string()),
        ("vc", pa.string()),
        ("flag", pa.bool_()),
        ("f8", pa.float64()),
        ("f4", pa.float64()),
    ]
)
DDL = """
CREATE TABLE sample (
    id bigint PRIMARY KEY, i4 integer, i2 smallint, money numeric(12, 2),
    wide numeric(30, 8), free numeric, ts timestamptz, naive timestamp, day date,
    txt text, vc varchar(20), flag boolean, f8 double precision, f4 real
)
"""
LONG = "long text " * 40 + "é"
ROWS = [
    (1, 1, 1, Decimal("0.00"), Decimal("0"), Decimal("0"),
     datetime(2026, 11, 26, 23, 59, 59, 999999, tzinfo=UTC), datetime(2026, 11, 26, 12, 0),
     date(2026, 11, 26), "plain", "abc", True, 1.5, 1.1),
    (-(2**63), -(2**31), -(2**15), Decimal("-9999999999.99"),
     Decimal("-1234567890123456789012.12345678"), Decimal("-0.0000000001"),
     datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=timezone(timedelta(hours=-5))),
     datetime(1899, 12, 31, 23, 59, 59, 500000), date(1900, 1, 1),
     "O'Brien \"quoted\"\nnew line\ttab \\ backslash, comma", "", False, -0.0, -3.25),
    (2**63 - 1, 2**31 - 1, 2**15 - 1, Decimal("9999999999.99"),
     Decimal("9999999999999999999999.99999999"), Decimal("1234567890123456789012345678.5"),
     datetime(2000, 1, 1, tzinfo=timezone(timedelta(hours=9, minutes=30))),
     datetime(2000, 1, 1), date(1999, 12, 31), "unicode: ünïcødé 日本語 🚀", "x" * 20,
     True, 1e308, 3.4e38),
    (4, None, None, None, None, None, None, None, None, None, None, None, None, None),
    (5, 0, 0, Decimal("12.30"), Decimal("0.00000001"), Decimal("42"),
     datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=2))),
     datetime(2026, 3, 29, 2, 30), date(2026, 2, 28), LONG, "NULL", False,
     float("inf"), float("-inf")),
    (6, 7, 8, Decimal("0.01"), None, Decimal("1.5"), None, datetime(1970, 1, 1), None,
     "", None, None, None, 0.0),
]  # fmt: skip


def _fill(url: str, rows=ROWS) -> None:
    with connect(url) as conn:
        conn.execute(DDL)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO sample VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )


def _expected(url: str, where: str = "", params: dict | None = None) -> pa.Table:
    """A plain SQLAlchemy select, converted as the generic reader does."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(f"SELECT * FROM sample {where} ORDER BY id"), params or {}
            ).all()
    finally:
        engine.dispose()

    def convert(value, typ):
        if value is None:
            return None
        if pa.types.is_timestamp(typ):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value

    columns = [[convert(r[i], f.type) for r in rows] for i, f in enumerate(SCHEMA)]
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, SCHEMA, strict=True)], schema=SCHEMA
    )


def _read(url: str, **kw) -> pa.Table:
    batches = list(
        stream_pg_batches(url, table="sample", columns=SCHEMA.names, schema=SCHEMA, **kw)
    )
    for b in batches:
        assert b.schema == SCHEMA
    return pa.Table.from_batches(batches, schema=SCHEMA).sort_by("id")


def test_same_rows_values_and_types_as_plain_select(pg_database: str) -> None:
    _fill(pg_database)
    got = _read(pg_database)
    expected = _expected(pg_database)
    assert got.schema == SCHEMA
    assert got.num_rows == len(ROWS)
    assert got.to_pylist() == expected.to_pylist()
    assert got.equals(expected)
    by_id = {r["id"]: r for r in got.to_pylist()}
    assert by_id[4]["txt"] is None and by_id[6]["txt"] == ""  # NULL is not ''
    assert by_id[5]["vc"] == "NULL" and by_id[5]["txt"] == LONG
    assert by_id[1]["naive"] == datetime(2026, 11, 26, 12, 0, tzinfo=UTC)  # naive = UTC
    assert by_id[1]["f4"] == 1.1  # as the generic reader sees a real


def test_small_batches_and_order_by(pg_database: str) -> None:
    _fill(pg_database)
    batches = list(
        stream_pg_batches(
            pg_database,
            table="sample",
            columns=SCHEMA.names,
            schema=SCHEMA,
            batch_rows=2,
            order_by=["id"],
        )
    )
    assert [b.num_rows for b in batches] == [2, 2, 2]
    ids = [i for b in batches for i in b.column("id").to_pylist()]
    assert ids == sorted(r[0] for r in ROWS)


def test_subset_of_columns(pg_database: str) -> None:
    _fill(pg_database)
    schema = pa.schema([("txt", pa.string()), ("id", pa.int64())])
    table = pa.Table.from_batches(
        list(stream_pg_batches(pg_database, table="sample", columns=schema.names, schema=schema))
    )
    assert sorted(table.column("id").to_pylist()) == sorted(r[0] for r in ROWS)


def test_where_with_parameters_is_not_injectable(pg_database: str) -> None:
    _fill(pg_database)
    evil = "x'; DROP TABLE sample; --"
    with connect(pg_database) as conn:
        conn.execute("UPDATE sample SET vc = %s WHERE id = 6", (evil[:20],))
        conn.execute("UPDATE sample SET txt = %s WHERE id = 1", (evil,))
    got = _read(pg_database, where_sql="txt = %s", params=(evil,))
    assert got.column("id").to_pylist() == [1]
    assert _read(pg_database, where_sql="txt = %s", params=("x",)).num_rows == 0
    got = _read(pg_database, where_sql="id > %(lo)s AND vc LIKE 'x%%'", params={"lo": 2})
    assert sorted(got.column("id").to_pylist()) == [6, 2**63 - 1]
    cutoff = datetime(2000, 1, 1, tzinfo=UTC)
    got = _read(pg_database, where_sql="ts >= %s", params=(cutoff,))
    expected = _expected(pg_database, "WHERE ts >= :c", {"c": cutoff})
    assert got.equals(expected)
    assert _read(pg_database).num_rows == len(ROWS)  # the table is still there


def test_render_where_placeholders(pg_database: str) -> None:
    """The driver binds the values as literals when the connection renders the filter; a
    placeholder/params mismatch fails then, naming the filter."""
    with connect(pg_database) as conn:
        rendered = render_where("id > %(lo)s AND vc LIKE 'x%%'", {"lo": 2}).as_string(conn)
        assert rendered == "id > 2 AND vc LIKE 'x%'"
        assert render_where("t = %s", ("o'r",)).as_string(conn) == "t = 'o''r'"
        for where_sql, params in [
            ("a = %s AND b = %s", (1,)),
            ("a = %s", (1, 2)),
            ("a = %(x)s", (1,)),
        ]:
            with pytest.raises(ValueError, match=re.escape(repr(where_sql))):
                render_where(where_sql, params).as_string(conn)


def test_empty_result_and_server_error(pg_database: str) -> None:
    _fill(pg_database)
    assert _read(pg_database, where_sql="false").num_rows == 0
    with pytest.raises(psycopg.errors.DivisionByZero):
        _read(pg_database, where_sql="id / 0 = 1")


def test_value_that_does_not_fit_fails_loudly(pg_database: str) -> None:
    _fill(pg_database)
    schema = pa.schema([("id", pa.int64()), ("free", pa.decimal128(12, 2))])
    with pytest.raises(ValueError, match="sample.free"):
        list(stream_pg_batches(pg_database, table="sample", columns=schema.names, schema=schema))


def test_reads_inside_the_callers_snapshot(pg_database: str) -> None:
    _fill(pg_database)
    reader = connect(pg_database)
    reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        first = _read(pg_database, conn=reader)
        with connect(pg_database) as writer:  # commits while the snapshot is open
            writer.execute("INSERT INTO sample (id) VALUES (100)")
            writer.execute("DELETE FROM sample WHERE id = 1")
        engine = sa.create_engine(pg_database)
        # A SQLAlchemy connection is accepted too (a new snapshot: sees the commit).
        with engine.connect() as sa_conn:
            assert 100 in _read(pg_database, conn=sa_conn).column("id").to_pylist()
        engine.dispose()
        second = _read(pg_database, conn=reader)
        assert second.equals(first)  # same snapshot: the commit is not visible
        assert reader.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        reader.rollback()
        ids = _read(pg_database, conn=reader).column("id").to_pylist()
        assert 100 in ids and 1 not in ids
    finally:
        reader.close()


def test_early_close_leaves_connection_usable(pg_database: str) -> None:
    _fill(pg_database)
    with connect(pg_database) as conn:
        conn.execute("INSERT INTO sample (id) SELECT g FROM generate_series(1000, 30000) g")
        conn.commit()
        stream = stream_pg_batches(
            pg_database,
            table="sample",
            columns=SCHEMA.names,
            schema=SCHEMA,
            batch_rows=1000,
            conn=conn,
        )
        assert next(stream).num_rows == 1000
        stream.close()
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM sample").fetchone()[0] == len(ROWS) + 29001
    assert threading.active_count() < 50  # reader threads are joined


def test_many_rows_across_blocks(pg_database: str) -> None:
    with connect(pg_database) as conn:
        conn.execute(DDL)
        conn.execute(
            "INSERT INTO sample (id, money, ts, txt, flag) SELECT g, g / 100.0,"
            " '2026-01-01'::timestamptz + g * interval '1 second',"
            " CASE WHEN g % 7 = 0 THEN NULL ELSE repeat('ab', g % 50) END, g % 2 = 0"
            " FROM generate_series(1, 20000) g"
        )
    got = _read(pg_database, batch_rows=3000)
    assert got.equals(_expected(pg_database))


def test_binary_numeric_is_exact_and_refuses_what_does_not_fit(pg_database: str) -> None:
    """NUMERIC(p <= 18) is decoded from its binary base-10000 digits: every value exact
    (group boundaries, signs, both ends of the precision); NaN, extra decimals and
    extra digits fail naming the column."""
    rng = random.Random(5)
    values = [
        Decimal("0"),
        Decimal("0.0001"),
        Decimal("-0.0001"),
        Decimal("9999.9999"),
        Decimal("10000"),
        Decimal("-10000.0001"),
        Decimal("99999999999999.9999"),
        Decimal("-99999999999999.9999"),
        Decimal("100000000"),
        Decimal("0.5"),
        None,
    ]
    values += [Decimal(rng.randrange(-(10**18) + 1, 10**18)).scaleb(-4) for _ in range(2000)]
    values += [Decimal(rng.randrange(-(10**6), 10**6)).scaleb(-rng.randrange(0, 5))
               for _ in range(2000)]  # fmt: skip
    with connect(pg_database) as conn:
        conn.execute("CREATE TABLE num (id bigint PRIMARY KEY, n numeric(18, 4), u numeric)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO num VALUES (%s, %s, %s)", [(i, v, v) for i, v in enumerate(values)]
            )
    schema = pa.schema([("id", pa.int64()), ("n", pa.decimal128(18, 4))])
    got = pa.Table.from_batches(
        stream_pg_batches(pg_database, table="num", columns=schema.names, schema=schema,
                          batch_rows=700),
        schema=schema,
    ).sort_by("id")  # fmt: skip
    assert got["n"].to_pylist() == [None if v is None else v.quantize(Decimal("0.0001"))
                                    for v in values]  # fmt: skip
    wide = pa.schema([("id", pa.int64()), ("u", pa.decimal128(18, 4))])
    for bad, message in (
        ("'NaN'", "num.u: cannot land NaN"),
        ("1.23456", "num.u: a value does not fit"),
        ("100000000000000", "num.u: a value has more than 18 digits"),
    ):
        with connect(pg_database) as conn:
            conn.execute(f"UPDATE num SET u = {bad} WHERE id = 1")
        with pytest.raises(ValueError, match=message):
            list(stream_pg_batches(pg_database, table="num", columns=wide.names, schema=wide))
