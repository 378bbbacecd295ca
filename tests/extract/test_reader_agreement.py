"""Both PostgreSQL readers land the same Parquet, or both fail naming the value.

The extract reads PostgreSQL through the binary COPY decoder (`auto_read_batches`,
extract/pg_copy.py) and can read it through the generic SQLAlchemy reader
(`read_batches`, every other database and the fallback). A seeded property test: a real
table with a column of every type the source may use (`pg_copy.SUPPORTED_TYPES`), rows
drawn at random from pools of ordinary and edge values (year 1 and 9999, max
precision, NaN and infinities where the type lands them, NULL, unicode, quotes, arrays
with NULLs, JSON null, `24:00:00`, ...), landed by `extract_tables` with each reader:
the two landed tables must be equal, value for value. Values that one reader cannot
represent (a typo'd year 20260, `infinity`, a timestamp near PostgreSQL's maximum, NaN
in a NUMERIC(12,2), more decimals than the landed scale) must fail in both, naming
`table.column` and the row's key. A table with a type the decoder does not read falls
back to the generic reader, logged with the reason.

Replay one seed:  pytest tests/extract/test_reader_agreement.py -k "seed-7"
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from extract.db_extract import ExtractPlan, auto_read_batches, extract_tables, read_batches
from extract.landing import UnlandableValueError, run_dir
from extract.tables import TableConfig

SEEDS = (7, 19, 42)
ROWS_PER_SEED = 120
NULL_SHARE = 0.15

Pool = Callable[[random.Random], str]


def _ints(bits: int) -> Pool:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return lambda r: str(r.choice([lo, hi, 0, -1, 1, r.randint(lo, hi)]))


def _numeric(precision: int, scale: int) -> Pool:
    digits = precision - scale

    def draw(r: random.Random) -> str:
        edge = "9" * digits + ("." + "9" * scale if scale else "")
        choice = r.randrange(6)
        if choice == 0:
            return edge
        if choice == 1:
            return "-" + edge
        if choice == 2:
            return "0" if not scale else "0." + "0" * (scale - 1) + "1"
        whole = str(r.randrange(10 ** r.randint(0, digits)))
        frac = "".join(str(r.randrange(10)) for _ in range(r.randint(0, scale)))
        sign = r.choice(["", "-"])
        return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"

    return draw


def _pick(*values: str) -> Pool:
    return lambda r: r.choice(values)


def _text(r: random.Random) -> str:
    return r.choice(
        [
            "",
            "plain",
            "NULL",
            "ünïcødé 日本語 🚀",
            "quote ' \" \\ backslash\nnew line\ttab, comma; {brace}",
            "long " * 60,
            "".join(
                chr(r.choice([r.randint(32, 126), r.randint(0xA0, 0x2FFF)])) for _ in range(12)
            ),
        ]
    )


def _timestamp(r: random.Random) -> str:
    return r.choice(
        [
            "0001-01-01 00:00:00",
            "9999-12-31 23:59:59.999999",
            "2000-01-01 00:00:00",
            "1969-12-31 23:59:59.999999",
            "1899-12-31 23:59:59.5",
            f"{r.randint(1, 9999):04d}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} "
            f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"
            f".{r.randrange(10**6):06d}",
        ]
    )


def _timestamptz(r: random.Random) -> str:
    offset = r.choice(["+00", "-03:30", "+09:30", "+14", "-12"])
    return r.choice(
        [
            "0001-01-01 00:00:00+00",
            "0001-01-01 00:00:00-05",  # 05:00 UTC: still year 1
            "9999-12-31 23:59:59.999999+00",
            "9999-12-31 23:00:00+05",  # 18:00 UTC
            "2026-03-29 01:30:00+02",
            f"{r.randint(2, 9998):04d}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} "
            f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"
            f".{r.randrange(10**6):06d}{offset}",
        ]
    )


def _date(r: random.Random) -> str:
    return r.choice(
        ["0001-01-01", "9999-12-31", "2000-01-01", "1970-01-01", "1900-02-28", _timestamp(r)[:10]]
    )


JSON = (
    '{"b": 1, "a": [1, 2.50, "é", null, true]}',
    '  {"spaced" :  1 ,"dup": 1, "dup": 2}',
    '"just a string"',
    "null",  # JSON null, not SQL NULL
    "[]",
    "1e400",
    '{"nested": {"deep": [[], {}, "\\u00e9\\n"]}}',
)

# column -> (PostgreSQL type, pool of SQL literals)
COLUMNS: dict[str, tuple[str, Pool]] = {
    "i2": ("smallint", _ints(16)),
    "i4": ("integer", _ints(32)),
    "i8": ("bigint", _ints(64)),
    "money": ("numeric(12, 2)", _numeric(12, 2)),
    "n18": ("numeric(18, 4)", _numeric(18, 4)),
    "n30": ("numeric(30, 8)", _numeric(30, 8)),
    "n38": ("numeric(38, 0)", _numeric(38, 0)),
    "free": ("numeric", _numeric(28, 10)),  # lands as decimal128(38, 10)
    "f4": ("real", _pick("1.1", "-0", "3.4028235e38", "1.4e-45", "NaN", "Infinity",
                         "-Infinity", "0.1", "1e-10", "16777217")),
    "f8": ("double precision", _pick("1.7976931348623157e308", "5e-324", "NaN", "Infinity",
                                     "-Infinity", "-0", "0.1", "3.141592653589793")),
    "txt": ("text", _text),
    "vc": ("varchar(20)", lambda r: _text(r)[:20]),
    "ch": ("char(5)", _pick("", "ab", "abcde", "é", " x ")),
    "flag": ("boolean", _pick("true", "false")),
    "day": ("date", _date),
    "ts": ("timestamp", _timestamp),
    # .999999 would round up to year 10000 in a timestamp(3): an unlandable value
    "ts3": ("timestamp(3)", lambda r: _timestamp(r).replace("59.999999", "59.999")),
    "tstz": ("timestamptz", _timestamptz),
    "tm": ("time", _pick("00:00:00", "23:59:59.999999", "24:00:00", "12:34:56.5")),
    "tmtz": ("timetz", _pick("00:00:00+00", "23:59:59.999999-12", "12:00:00+05:30")),
    "iv": ("interval", _pick("0", "1 year 2 mons 3 days 04:05:06.789", "-1 day",
                             "178000000 years", "-00:00:00.000001", "P1Y2M", "1 day -1 second")),
    "u": ("uuid", lambda r: str(uuid.UUID(int=r.getrandbits(128)))),
    "js": ("json", _pick(*JSON)),
    "jsb": ("jsonb", _pick(*JSON[:-1])),
    "bin": ("bytea", lambda r: "\\x" + r.randbytes(r.randint(0, 40)).hex()),
    "ai": ("integer[]", _pick("{}", "{1,NULL,3}", "{{1,2},{3,4}}", "{-2147483648}")),
    "atx": ("text[]", _pick('{"a b","c,d","\\"q\\"",NULL,"NULL",""}', "{é}", "{}")),
    "anum": ("numeric[]", _pick("{1.5,NaN,-0.001}", "{}", "{NULL}")),
    "atz": ("timestamptz[]", _pick('{"2026-01-01 00:00:00+00",infinity}', "{}")),
    "order-ref": ("text", _text),
    "Mixed Case": ("varchar(40)", lambda r: _text(r)[:40]),
}  # fmt: skip

# Values a reader cannot land: (column, SQL literal). Both readers must fail on each.
UNLANDABLE = [
    ("ts", "20260-01-01 00:00:00"),  # a typo'd year
    ("ts", "294276-12-31 23:59:59.999999"),  # PostgreSQL's maximum: wrapped before
    ("ts", "infinity"),
    ("ts3", "-infinity"),
    ("ts", "0044-03-15 00:00:00 BC"),
    ("tstz", "infinity"),
    ("tstz", "20260-06-01 00:00:00+00"),
    ("day", "infinity"),
    ("day", "20260-01-01"),
    ("day", "0001-01-01 BC"),
    ("money", "NaN"),  # binary NUMERIC path
    ("n18", "NaN"),
    ("n30", "NaN"),  # text NUMERIC path
    ("free", "Infinity"),
    ("free", "0.00000000001"),  # 11 decimals: the landed scale is 10
    ("free", "123456789012345678901234567890"),  # 30 digits: 28 fit before the scale
]

TABLE = "agree"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _create(conn: psycopg.Connection, table: str = TABLE) -> None:
    columns = ", ".join(f"{_ident(c)} {t}" for c, (t, _) in COLUMNS.items())
    conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, {columns})")


def _rows(seed: int, n: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row: list[Any] = [seed * 10_000 + i]
        for _, pool in COLUMNS.values():
            row.append(None if rng.random() < NULL_SHARE else pool(rng))
        rows.append(tuple(row))
    # one row of all NULLs, one of each pool's first edge
    rows.append((seed * 10_000 + n, *([None] * len(COLUMNS))))
    return rows


def _insert(conn: psycopg.Connection, rows: list[tuple[Any, ...]], table: str = TABLE) -> None:
    casts = ", ".join(f"%s::{t}" for t, _ in COLUMNS.values())
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s, {casts})", rows)


def _land(url: str, root: Path, reader: Any, table: str = TABLE, **kw: Any) -> pa.Table:
    extract_tables(
        url,
        ExtractPlan(
            run_id="r1",
            landing_root=root,
            warehouse_path=None,
            configs=[TableConfig(table, mode="full")],
            reader=reader,
            batch_size=50,
            **kw,
        ),
    )  # several batches, several COPY blocks
    return pq.read_table(run_dir(root, "source_db", table, "r1")).sort_by("id")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _assert_equal(copy: pa.Table, generic: pa.Table) -> None:
    assert copy.schema == generic.schema, f"{copy.schema}\n!=\n{generic.schema}"
    assert copy.num_rows == generic.num_rows
    ids = copy.column("id").to_pylist()
    for name in copy.schema.names:
        left, right = copy.column(name).to_pylist(), generic.column(name).to_pylist()
        for key, a, b in zip(ids, left, right, strict=True):
            assert _same(a, b), f"{TABLE}.{name} of row id={key}: COPY {a!r}, generic {b!r}"


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed-{s}")
def test_both_readers_land_the_same_parquet(
    pg_database: str, tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(pg_database.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("SET TimeZone = 'America/St_Johns'")  # the readers must not care
        _create(conn)
        _insert(conn, _rows(seed, ROWS_PER_SEED))
        conn.execute(f"ALTER DATABASE {conn.info.dbname} SET TimeZone = 'Asia/Kathmandu'")
    caplog.set_level(logging.INFO)
    copy = _land(pg_database, tmp_path / "copy", auto_read_batches)
    generic = _land(pg_database, tmp_path / "generic", read_batches)
    assert "read with the generic reader" not in caplog.text  # the COPY path was used
    assert copy.num_rows == ROWS_PER_SEED + 1
    _assert_equal(copy, generic)
    # a few values whose landed form is the contract, not just agreement
    rows = {r["id"]: r for r in copy.to_pylist()}
    assert any(r["js"] == "null" for r in rows.values())  # JSON null is text, not NULL
    landed_types = {f.name: str(f.type) for f in copy.schema}
    assert landed_types["money"] == "decimal128(12, 2)" and landed_types["iv"] == "string"
    assert landed_types["tstz"] == "timestamp[us, tz=UTC]" and landed_types["f4"] == "double"


def test_values_no_reader_can_land_fail_in_both_naming_table_column_and_row(
    pg_database: str, tmp_path: Path
) -> None:
    rng = random.Random(3)
    url = pg_database.replace("+psycopg", "")
    with psycopg.connect(url, autocommit=True) as conn:
        _create(conn)
        _insert(conn, _rows(1, 30))
    from pipeline.task_run import is_deterministic

    assert is_deterministic(UnlandableValueError("x"))
    for n, (column, literal) in enumerate(UNLANDABLE):
        key = 10_000 + rng.randrange(30)
        with psycopg.connect(url, autocommit=True) as conn:
            before = conn.execute(f"SELECT {_ident(column)} FROM {TABLE} WHERE id = %s", [key])
            saved = before.fetchone()[0]  # type: ignore[index]
            type_ = COLUMNS[column][0]
            conn.execute(
                f"UPDATE {TABLE} SET {_ident(column)} = %s::{type_} WHERE id = %s", [literal, key]
            )
        try:
            for reader in (auto_read_batches, read_batches):
                with pytest.raises(UnlandableValueError) as info:  # not retried (task_run)
                    _land(pg_database, tmp_path / f"{n}-{reader.__name__}", reader)
                message = str(info.value)
                assert f"{TABLE}.{column}" in message and f"id={key}" in message, (
                    f"{reader.__name__} on {column}={literal!r}: {message}"
                )
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    f"UPDATE {TABLE} SET {_ident(column)} = %s WHERE id = %s", [saved, key]
                )


def test_a_type_the_decoder_does_not_read_falls_back_with_the_reason(
    pg_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = pg_database.replace("+psycopg", "")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('ok', 'sad')")
        conn.execute(
            "CREATE TABLE odd (id bigint PRIMARY KEY, m mood, addr inet, span int4range, "
            "cash money, n numeric(12, 2))"
        )
        conn.execute(
            "INSERT INTO odd VALUES (1, 'ok', '10.0.0.1/8', '[1,5)', 12.5, 1.25), "
            "(2, NULL, NULL, 'empty', NULL, NULL)"
        )
    caplog.set_level(logging.WARNING)
    auto = _land(pg_database, tmp_path / "auto", auto_read_batches, table="odd")
    assert "odd: read with the generic reader, not binary COPY" in caplog.text
    assert "addr (inet)" in caplog.text and "span (int4range)" in caplog.text
    assert "m (mood)" in caplog.text and "cash (money)" in caplog.text
    generic = _land(pg_database, tmp_path / "generic", read_batches, table="odd")
    assert auto.equals(generic)
    assert auto.column("addr").to_pylist() == ["10.0.0.1/8", None]  # the server's text
    assert auto.column("span").to_pylist() == ["[1,5)", "empty"]
    caplog.clear()  # key ranges read at once (their own COPY connections) fall back too
    ranged = _land(
        pg_database, tmp_path / "ranged", auto_read_batches, "odd", parallelism=2,
        parallel_min_rows=0,
    )  # fmt: skip
    assert ranged.equals(generic) and "odd: read with the generic reader" in caplog.text
