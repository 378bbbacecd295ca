"""Parallel key ranges in the real extract (`extract_tables`): same landing as one stream.

PostgreSQL reads a table by several key ranges at once, every reader in the run's own
snapshot; other databases fall back to one stream in the run's transaction. Either way
the landed rows, manifests and watermarks are exactly those of the serial path.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

import extract.key_ranges as key_ranges
from core.settings import sqlalchemy_url
from demo.generator import apply_next_day, generate
from extract.db_extract import ExtractPlan, extract_sharded_source, extract_tables, shard_run_id
from extract.landing import run_dir
from extract.shards import ShardMap
from extract.tables import DEFAULT_TABLES, TableConfig, apply_overrides
from tests.servers import fresh_database
from warehouse.load import SourceLoadPlan, load_source_db

END = date(2026, 11, 20)
LANDED = (
    "users",
    "products",
    "orders",
    "order_items",
    "order_items__keys",
    "order_items__key_ranges",
)
# Manifest fields that must not depend on how the rows were read.
SAME = ("rows", "mode", "key", "window_start", "min_cursor", "max_cursor", "columns")


def _landed(landing: Path, run_id: str, table: str) -> pa.Table:
    landed = pq.read_table(run_dir(landing, "source_db", table, run_id))
    return landed.sort_by("b" if table.endswith("__key_ranges") else "id")


def _assert_same_landing(a: Path, run_a: str, b: Path, run_b: str, ma: dict, mb: dict) -> None:
    assert set(ma) == set(mb) == set(LANDED)
    for table in LANDED:
        ta, tb = _landed(a, run_a, table), _landed(b, run_b, table)
        assert ta.schema == tb.schema, table
        assert ta.equals(tb), table
        assert {k: ma[table].get(k) for k in SAME} == {k: mb[table].get(k) for k in SAME}, table


@pytest.fixture
def range_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(table, ranges) of every parallel read (the real `extract_parallel`, recorded)."""
    calls: list[tuple[str, int]] = []
    real = key_ranges.extract_parallel

    def recording(read, fn) -> Iterator:
        calls.append((read.table, len(read.ranges)))
        yield from real(read, fn)

    monkeypatch.setattr(key_ranges, "extract_parallel", recording)
    return calls


def _extract(url: str, landing: Path, run_id: str, warehouse: Path | None, **kwargs) -> dict:
    return extract_tables(
        url, ExtractPlan(run_id=run_id, landing_root=landing, warehouse_path=warehouse, **kwargs)
    )


def test_postgres_parallel_ranges_land_exactly_what_one_stream_lands(
    pg_database: str, tmp_path: Path, range_reads: list[tuple[str, int]]
) -> None:
    """Full, then incremental after a load: degree 4 = degree 1, row for row."""
    generate(pg_database, seed=21, days=4, end_date=END, orders_per_day=60)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    warehouse = tmp_path / "warehouse.duckdb"

    m1 = _extract(pg_database, serial, "r1", warehouse)
    assert range_reads == []  # degree 1: the plain stream
    p1 = _extract(pg_database, parallel, "r1", warehouse, parallelism=4, parallel_min_rows=0)
    assert {t for t, _ in range_reads} == {"users", "products", "orders", "order_items"}
    assert all(n == 4 for _, n in range_reads)
    _assert_same_landing(serial, "r1", parallel, "r1", m1, p1)
    load_source_db(serial, SourceLoadPlan("r1", "UTC", warehouse_path=warehouse))

    apply_next_day(pg_database, seed=22)
    range_reads.clear()
    m2 = _extract(pg_database, serial, "r2", warehouse)
    # the table's own parallel_ranges wins over the run's default
    configs = apply_overrides({"tables": {"orders": {"parallel_ranges": 3}}})
    p2 = _extract(
        pg_database, parallel, "r2", warehouse, configs=configs, parallelism=2, parallel_min_rows=0
    )
    assert m2["orders"]["window_start"] is not None  # a real incremental window
    assert ("orders", 3) in range_reads and ("users", 2) in range_reads
    _assert_same_landing(serial, "r2", parallel, "r2", m2, p2)
    assert 0 < m2["orders"]["rows"] < m1["orders"]["rows"]


def test_small_reads_are_not_split(
    pg_database: str, tmp_path: Path, range_reads: list[tuple[str, int]]
) -> None:
    """Below `parallel_min_rows` rows per range (planner estimate), one plain stream."""
    generate(pg_database, seed=3, days=2, end_date=END, orders_per_day=20)
    with sa.create_engine(sqlalchemy_url(pg_database)).begin() as conn:
        conn.execute(sa.text("analyze"))
    m = _extract(pg_database, tmp_path / "l", "r1", None, parallelism=4)  # default threshold
    assert range_reads == []
    assert m["orders"]["rows"] == 40


def test_all_ranges_key_set_and_bound_share_the_run_snapshot(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes committed after the run's snapshot (while its ranges are being planned)
    are in no range and in no key set: every reader sees the run's snapshot."""
    generate(pg_database, seed=8, days=3, end_date=END, orders_per_day=50)
    engine = sa.create_engine(sqlalchemy_url(pg_database))
    with engine.connect() as conn:
        before_orders = {
            r.id: r.status for r in conn.execute(sa.text("select id, status from orders"))
        }
        before_items = set(conn.execute(sa.text("select id from order_items")).scalars())
    victim_item = min(before_items)
    changed_order = max(before_orders)
    real_split = key_ranges.split_key_ranges
    writes: list[str] = []

    def split_then_write(conn, table, *args, **kwargs):
        ranges = real_split(conn, table, *args, **kwargs)
        if not writes:  # once, between the snapshot and the first range read
            with engine.begin() as other:
                other.execute(
                    sa.text(
                        "insert into orders (id, user_id, status, currency, total, created_at,"
                        " updated_at) select max(id) + 1, min(user_id), 'paid', 'USD', 1.00,"
                        " '2026-11-19 10:00+00', '2026-11-19 10:00+00' from orders"
                    )
                )
                other.execute(
                    sa.text("update orders set status = 'refunded' where id = :id"),
                    {"id": changed_order},
                )
                other.execute(
                    sa.text("delete from order_items where id = :id"), {"id": victim_item}
                )
            writes.append(table)
        return ranges

    monkeypatch.setattr(key_ranges, "split_key_ranges", split_then_write)
    try:
        m = _extract(pg_database, tmp_path / "l", "r1", None, parallelism=4, parallel_min_rows=0)
    finally:
        engine.dispose()
    assert writes == ["users"]  # the first table's split: before any range was read
    orders = _landed(tmp_path / "l", "r1", "orders")
    assert dict(zip(orders["id"].to_pylist(), orders["status"].to_pylist(), strict=True)) == (
        before_orders
    )
    items = set(_landed(tmp_path / "l", "r1", "order_items")["id"].to_pylist())
    keys = set(_landed(tmp_path / "l", "r1", "order_items__keys")["id"].to_pylist())
    assert items == keys == before_items  # the deleted item is still in both
    assert m["orders"]["rows"] == len(before_orders)


@pytest.mark.parametrize("dialect", ["sqlite", "mariadb"])
def test_other_databases_fall_back_to_one_stream(
    dialect: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    range_reads: list[tuple[str, int]],
) -> None:
    """No snapshot export: parallel_ranges reads one stream in the run's transaction."""
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'source.db'}"
    else:
        url = request.getfixturevalue("mariadb_database")
    generate(url, seed=5, days=3, end_date=END, orders_per_day=30, if_exists="replace")
    configs = tuple(TableConfig(**{**c.__dict__, "parallel_ranges": 4}) for c in DEFAULT_TABLES)
    serial = _extract(url, tmp_path / "serial", "r1", None)
    parallel = _extract(
        url, tmp_path / "parallel", "r1", None, configs=configs, parallel_min_rows=0
    )
    assert range_reads == []
    _assert_same_landing(tmp_path / "serial", "r1", tmp_path / "parallel", "r1", serial, parallel)


def test_sharded_postgres_source_with_parallel_ranges(
    postgres_admin_url: str, tmp_path: Path, range_reads: list[tuple[str, int]]
) -> None:
    """Each shard reads its vshards by key ranges in its own snapshot: same landing."""
    with fresh_database(postgres_admin_url) as a, fresh_database(postgres_admin_url) as b:
        for url in (a, b):  # the same rows in both: each shard keeps only its vshards
            generate(url, seed=13, days=3, end_date=END, orders_per_day=50)
        shard_map = ShardMap.from_dict(
            {
                "virtual_shards": 8,  # small ids: both shards get rows of every table
                "version": 1,
                "shards": [
                    {"name": "a", "url": a, "vshards": [[0, 3]]},
                    {"name": "b", "url": b, "vshards": [[4, 7]]},
                ],
            }
        )
        out = {}
        for name, degree in (("serial", 1), ("parallel", 3)):
            out[name] = extract_sharded_source(
                shard_map,
                ExtractPlan(
                    run_id="r1",
                    landing_root=tmp_path / name,
                    warehouse_path=None,
                    parallelism=degree,
                    parallel_min_rows=0,
                ),
            )
    assert {n for _, n in range_reads} == {3} and len(range_reads) == 8  # 4 tables x 2 shards
    assert out["serial"] == out["parallel"]
    for shard in ("a", "b"):
        run = shard_run_id("r1", shard)
        for table in LANDED[:-1]:  # a shard lands its full key set, no summaries
            ta = _landed(tmp_path / "serial", run, table)
            tb = _landed(tmp_path / "parallel", run, table)
            assert ta.equals(tb), (shard, table)
            assert ta.num_rows and {i % 8 < 4 for i in ta["id"].to_pylist()} == {shard == "a"}


def test_postgres_key_set_is_read_by_the_copy_decoder(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key set of a `reconcile_deletes` table grows with the history, not the night:
    on PostgreSQL it is read by binary COPY, incremental night included, and
    holds every key of the source, the deleted item's gone."""
    import extract.pg_copy as pg_copy

    generate(pg_database, seed=23, days=3, end_date=END, orders_per_day=40)
    read: list[tuple[str, tuple[str, ...]]] = []
    real = pg_copy.copy_batches

    def recording(query, **kwargs) -> Iterator:
        read.append((query.table, tuple(query.columns)))
        yield from real(query, **kwargs)

    monkeypatch.setattr(pg_copy, "copy_batches", recording)
    warehouse = tmp_path / "warehouse.duckdb"
    _extract(pg_database, tmp_path / "l", "r1", warehouse)
    load_source_db(tmp_path / "l", SourceLoadPlan("r1", "UTC", warehouse_path=warehouse))
    summary = apply_next_day(pg_database, seed=24, orders_per_day=40)
    read.clear()
    m = _extract(pg_database, tmp_path / "l", "r2", warehouse)
    assert ("order_items", ("id",)) in read
    engine = sa.create_engine(sqlalchemy_url(pg_database))
    try:
        with engine.connect() as conn:
            source = {r[0] for r in conn.execute(sa.text("select id from order_items"))}
    finally:
        engine.dispose()
    keys = _landed(tmp_path / "l", "r2", "order_items__keys")["id"].to_pylist()
    assert len(keys) == len(set(keys)) == m["order_items__keys"]["rows"]
    assert set(keys) == source
    assert not set(summary["deleted_item_ids"]) & set(keys)
