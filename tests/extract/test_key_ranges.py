"""Key ranges tile the key space; parallel readers share one snapshot."""

from __future__ import annotations

import random
import threading

import pyarrow as pa
import pytest
import sqlalchemy as sa

import extract.key_ranges as kr
from extract.key_ranges import ParallelRead, RowFilter, extract_parallel, split_key_ranges
from extract.pg_copy import connect, stream_pg_batches

SCHEMA = pa.schema([("id", pa.int64()), ("v", pa.string())])


def _table(url: str, keys) -> None:
    with connect(url) as conn:
        conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s, %s)", [(k, f"v{k}") for k in keys])
        conn.execute("ANALYZE t")


def _check_tiling(ranges, keys) -> None:
    assert ranges, "no ranges for a non-empty key set"
    assert ranges[0][0] == min(keys) and ranges[-1][1] == max(keys)
    for (lo, hi), (nxt, _) in zip(ranges, ranges[1:], strict=False):
        assert lo <= hi and hi + 1 == nxt
    assert ranges[-1][0] <= ranges[-1][1]
    for k in keys:  # every key in exactly one range
        assert sum(lo <= k <= hi for lo, hi in ranges) == 1


def _range_reader(url: str, where: str = "", params=()):
    def read(conn, lo, hi):
        clause = "id BETWEEN %s AND %s" + (f" AND {where}" if where else "")
        return stream_pg_batches(
            url,
            table="t",
            columns=SCHEMA.names,
            schema=SCHEMA,
            where_sql=clause,
            params=(lo, hi, *params),
            conn=conn,
            batch_rows=100,
        )

    return read


def test_ranges_cover_every_key_once_with_gaps(pg_database: str) -> None:
    rng = random.Random(7)
    keys = sorted(rng.sample(range(-5_000, 1_000_000), 3_000)) + [10**15]
    _table(pg_database, keys)
    with connect(pg_database) as conn:
        for degree in (1, 2, 3, 7, 64):
            ranges = split_key_ranges(conn, "t", "id", degree)
            assert len(ranges) <= degree
            _check_tiling(ranges, keys)
        ranges = split_key_ranges(conn, "t", "id", 4)
        sizes = [sum(lo <= k <= hi for k in keys) for lo, hi in ranges]
        assert max(sizes) < 2 * len(keys) / 4  # roughly equal rows despite the gaps
        filtered = [k for k in keys if k % 2 == 0]
        ranges = split_key_ranges(conn, "t", "id", 3, RowFilter("id %% 2 = %s", (0,)))
        _check_tiling(ranges, filtered)


def test_sampled_quantiles_still_tile(pg_database: str, monkeypatch) -> None:
    keys = list(range(1, 20_001, 3))
    _table(pg_database, keys)
    monkeypatch.setattr(kr, "SAMPLE_ROWS", 500)
    with connect(pg_database) as conn:
        ranges = split_key_ranges(conn, "t", "id", 5)
    _check_tiling(ranges, keys)
    assert len(ranges) >= 3


def test_single_row_empty_table_and_degree_above_rows(pg_database: str) -> None:
    _table(pg_database, [42])
    with connect(pg_database) as conn:
        assert split_key_ranges(conn, "t", "id", 5) == [(42, 42)]
        assert split_key_ranges(conn, "t", "id", 3, RowFilter("id > %s", (42,))) == []
        conn.execute("INSERT INTO t VALUES (43, 'a'), (50, 'b')")
        ranges = split_key_ranges(conn, "t", "id", 10)
        _check_tiling(ranges, [42, 43, 50])
        assert len(ranges) <= 3
    with pytest.raises(ValueError):
        split_key_ranges(None, "t", "id", 0)


def test_min_rows_per_range_lowers_the_degree(pg_database: str) -> None:
    keys = list(range(1, 5_001))
    _table(pg_database, keys)
    with connect(pg_database) as conn:
        assert len(split_key_ranges(conn, "t", "id", 4, min_rows_per_range=2_000)) == 2
        one = split_key_ranges(
            conn, "t", "id", 4, RowFilter("id > %s", (4_900,)), min_rows_per_range=2_000
        )
        assert one == [(4_901, 5_000)]


def test_generic_ranges_on_sqlite(tmp_path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's.db'}")
    keys = [1, 2, 3, 10, 11, 500, 501, 502, 10_000]
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
        conn.execute(sa.text("INSERT INTO t VALUES (:k, 'x')"), [{"k": k} for k in keys])
    with engine.connect() as conn:
        for degree in (1, 2, 4, 20):
            _check_tiling(split_key_ranges(conn, "t", "id", degree), keys)
        ranges = split_key_ranges(conn, "t", "id", 3, RowFilter("id < :hi", {"hi": 600}))
        _check_tiling(ranges, [k for k in keys if k < 600])

    def read(conn, lo, hi):
        rows = conn.execute(
            sa.text("SELECT id FROM t WHERE id BETWEEN :lo AND :hi"), {"lo": lo, "hi": hi}
        ).all()
        yield [r[0] for r in rows]

    url = str(engine.url)
    with engine.connect() as conn:
        ranges = split_key_ranges(conn, "t", "id", 3)
    engine.dispose()
    got = [
        k
        for batch in extract_parallel(ParallelRead(url, "t", ranges, max_workers=3), read)
        for k in batch
    ]
    assert sorted(got) == keys  # sequential, one transaction, each key once


def test_parallel_reads_every_row_once(pg_database: str) -> None:
    keys = list(range(1, 3_001)) + list(range(100_000, 101_000))
    _table(pg_database, keys)
    with connect(pg_database) as conn:
        ranges = split_key_ranges(conn, "t", "id", 4)
    batches = list(
        extract_parallel(ParallelRead(pg_database, "t", ranges, 2), _range_reader(pg_database))
    )
    got = [k for b in batches for k in b.column("id").to_pylist()]
    assert sorted(got) == keys
    with connect(pg_database) as conn:  # a key added after the split is still read
        conn.execute("INSERT INTO t VALUES (5000000, 'late'), (-7, 'early')")
    got = [
        k
        for b in extract_parallel(
            ParallelRead(pg_database, "t", ranges, 3), _range_reader(pg_database)
        )
        for k in b.column("id").to_pylist()
    ]
    assert sorted(got) == sorted([*keys, 5_000_000, -7])


def test_parallel_ranges_share_one_snapshot(pg_database: str) -> None:
    keys = list(range(1, 2_001))
    _table(pg_database, keys)
    with connect(pg_database) as conn:
        ranges = split_key_ranges(conn, "t", "id", 3)
    inner = _range_reader(pg_database)
    started = threading.Barrier(3, timeout=30)
    go = threading.Event()

    seen: set[int] = set()

    def gated(conn, lo, hi):
        # The worker's transaction has imported the snapshot before fn is called.
        if threading.get_ident() not in seen:
            seen.add(threading.get_ident())
            started.wait()  # each worker waits for the concurrent commits
        assert go.wait(30)
        yield from inner(conn, lo, hi)

    result: list = []
    errors: list = []

    def consume() -> None:
        try:
            result.extend(
                extract_parallel(ParallelRead(pg_database, "t", ranges, max_workers=2), gated)
            )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    started.wait()  # both workers are inside their snapshot transactions
    with connect(pg_database) as writer:  # one transaction touching every range
        writer.execute("INSERT INTO t VALUES (0, 'new'), (-3, 'new'), (5000, 'new')")
    with connect(pg_database) as writer:
        writer.execute("UPDATE t SET v = 'changed' WHERE id IN (1, 1001, 2000)")
        writer.execute("DELETE FROM t WHERE id IN (2, 1500, 1999)")
    go.set()
    consumer.join(60)
    assert not errors, errors
    table = pa.Table.from_batches(result).sort_by("id")
    assert table.column("id").to_pylist() == keys  # none of the later commits
    assert set(table.column("v").to_pylist()) == {f"v{k}" for k in keys}
