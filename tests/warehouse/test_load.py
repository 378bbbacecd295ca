"""warehouse.load: landed deltas merged into the current-state `raw` schema (DuckDB)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from extract.landing import LandingOptions, LandingTarget, read_manifest, write_landing_table
from extract.watermark import last_watermark
from warehouse.load import LoadError, SourceLoadPlan, load_payments_api, load_source_db

UTC = dt.UTC
TS = pa.timestamp("us", tz="UTC")
TZ = "America/New_York"


def ts(day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour, tzinfo=UTC)


def land(landing: Path, source: str, table: str, run_id: str, data: pa.Table, **extra) -> dict:
    manifest = {"mode": "incremental", "key": "id", "cursor_key": "updated_at"}
    manifest.update(extra)
    return write_landing_table(
        data,
        schema=data.schema,
        target=LandingTarget(landing_root=landing, source=source, table_name=table, run_id=run_id),
        options=LandingOptions(
            cursor_column="updated_at" if "updated_at" in data.schema.names else None,
            extra_manifest=manifest,
        ),
    )


def orders(rows: list[tuple], coupon: bool = False) -> pa.Table:
    """rows: (id, user_id, status, total, created_at, updated_at)."""
    columns = {
        "id": pa.array([r[0] for r in rows], pa.int64()),
        "user_id": pa.array([r[1] for r in rows], pa.int64()),
        "status": pa.array([r[2] for r in rows], pa.string()),
        "currency": pa.array(["EUR"] * len(rows), pa.string()),
        "total": pa.array([Decimal(r[3]) for r in rows], pa.decimal128(12, 2)),
        "created_at": pa.array([r[4] for r in rows], TS),
        "updated_at": pa.array([r[5] for r in rows], TS),
    }
    if coupon:
        columns["coupon"] = pa.array(["X"] * len(rows), pa.string())
    return pa.table(columns)


def users(rows: list[tuple]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int64()),
            "region": pa.array([r[1] for r in rows], pa.string()),
            "updated_at": pa.array([r[2] for r in rows], TS),
        }
    )


def products(rows: list[tuple]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int64()),
            "category": pa.array([r[1] for r in rows], pa.string()),
            "updated_at": pa.array([r[2] for r in rows], TS),
        }
    )


def items(rows: list[tuple]) -> pa.Table:
    """rows: (id, order_id, product_id, updated_at)."""
    return pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int64()),
            "order_id": pa.array([r[1] for r in rows], pa.int64()),
            "product_id": pa.array([r[2] for r in rows], pa.int64()),
            "quantity": pa.array([1] * len(rows), pa.int64()),
            "unit_price": pa.array([Decimal("1.00")] * len(rows), pa.decimal128(12, 2)),
            "updated_at": pa.array([r[3] for r in rows], TS),
        }
    )


def keys(ids: list[int]) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64())})


def land_run(
    landing: Path,
    run_id: str,
    window_end: dt.datetime,
    *,
    u: list[tuple],
    p: list[tuple],
    o: list[tuple],
    i: list[tuple],
    item_keys: list[int],
    coupon: bool = False,
) -> None:
    extra = {"window_end": window_end.isoformat()}
    land(landing, "source_db", "users", run_id, users(u), **extra)
    land(landing, "source_db", "products", run_id, products(p), **extra)
    land(landing, "source_db", "orders", run_id, orders(o, coupon), **extra)
    land(landing, "source_db", "order_items", run_id, items(i), reconcile_deletes=True, **extra)
    land(landing, "source_db", "order_items__keys", run_id, keys(item_keys), mode="key_set")


def q(path: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def restated(path: Path, run_id: str) -> set[tuple[str, str]]:
    return {
        (d.isoformat(), reason)
        for d, reason in q(
            path,
            "select business_date, reason from ops.restated_days where run_id = ?",
            [run_id],
        )
    }


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    landing = tmp_path / "landing"
    wh = tmp_path / "wh" / "warehouse.duckdb"
    land_run(
        landing,
        "r1",
        ts(20),
        u=[(1, "EU", ts(1)), (2, "US", ts(1))],
        p=[(10, "books", ts(1)), (11, "toys", ts(1))],
        o=[
            (100, 1, "paid", "10.00", ts(5), ts(5)),
            (101, 2, "paid", "20.00", ts(6), ts(6)),
            (102, 2, "paid", "30.00", ts(7), ts(7)),
            (103, 1, "paid", "40.00", ts(8), ts(8)),
        ],
        i=[(1000, 100, 10, ts(5)), (1001, 101, 11, ts(6)), (1002, 103, 10, ts(8))],
        item_keys=[1000, 1001, 1002],
    )
    return landing, wh


def test_first_load_creates_current_state(two_runs) -> None:
    landing, wh = two_runs
    result = load_source_db(landing, SourceLoadPlan("r1", TZ, warehouse_path=wh))
    assert result["raw_rows"] == {"users": 2, "products": 2, "orders": 4, "order_items": 3}
    # every day with an order is new
    assert result["restated_days"] == [
        "2024-01-05",
        "2024-01-06",
        "2024-01-07",
        "2024-01-08",
    ]
    types = dict(
        q(
            wh,
            "select column_name, data_type from information_schema.columns "
            "where table_schema = 'raw' and table_name = 'orders'",
        )
    )
    assert types["total"] == "DECIMAL(12,2)"
    assert types["created_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["_run_id"] == "VARCHAR"
    assert types["_loaded_at"] == "TIMESTAMP WITH TIME ZONE"
    mark = last_watermark(wh, "source_db", "orders")
    assert mark is not None and mark.run_id == "r1" and mark.window_end == ts(20)
    assert mark.max_cursor == ts(8)
    read_at = read_manifest(landing, "source_db", "orders", "r1")["extracted_at"]
    assert mark.extracted_at == dt.datetime.fromisoformat(read_at)  # when it was read


def test_second_run_merges_deletes_and_restates(two_runs) -> None:
    landing, wh = two_runs
    load_source_db(landing, SourceLoadPlan("r1", TZ, warehouse_path=wh))
    land_run(
        landing,
        "r2",
        ts(21),
        u=[(2, "APAC", ts(9))],  # region move: days of 101 and 102
        p=[(11, "toys", ts(1))],  # overlap re-read, unchanged: restates nothing
        o=[
            (100, 1, "paid", "10.00", ts(5), ts(5)),  # overlap re-read, unchanged
            (103, 1, "cancelled", "40.00", ts(8), ts(9)),  # status change
            (103, 1, "paid", "40.00", ts(8), ts(8, 13)),  # older version in the same delta
            (104, 1, "paid", "5.00", ts(3), ts(9)),  # late order
        ],
        i=[(1003, 104, 10, ts(9))],
        item_keys=[1000, 1002, 1003],  # 1001 (order 101) hard-deleted
        coupon=True,  # a new source column
    )
    result = load_source_db(landing, SourceLoadPlan("r2", TZ, warehouse_path=wh))
    assert result["deleted"]["order_items"] == 1
    assert q(wh, "select table_name, key from ops.deleted_rows") == [("order_items", "1001")]
    assert q(wh, "select id, status, coupon, _run_id from raw.orders order by id") == [
        (100, "paid", "X", "r2"),
        (101, "paid", None, "r1"),
        (102, "paid", None, "r1"),
        (103, "cancelled", "X", "r2"),
        (104, "paid", "X", "r2"),
    ]
    assert q(wh, "select id from raw.order_items order by id") == [(1000,), (1002,), (1003,)]
    assert q(wh, "select region from raw.users where id = 2") == [("APAC",)]
    assert restated(wh, "r2") == {
        ("2024-01-08", "order_changed"),
        ("2024-01-03", "order_new"),
        ("2024-01-03", "items_changed"),
        ("2024-01-06", "item_deleted"),
        ("2024-01-06", "user_region"),
        ("2024-01-07", "user_region"),
    }
    assert result["restated_days"] == ["2024-01-03", "2024-01-06", "2024-01-07", "2024-01-08"]


def test_loaded_at_is_the_run_clock_and_kept_for_rows_read_again(two_runs, monkeypatch) -> None:
    """`_loaded_at` (what source freshness ages) and `deleted_at` come from the run's clock
    (NIGHTSHIFT_NOW), one instant per load, not from the warehouse's own now(). A row read
    again as it is (the window's overlap) keeps its stamp: a source that stopped changing
    goes stale even though every night re-reads its last rows."""
    landing, wh = two_runs
    monkeypatch.setenv("NIGHTSHIFT_NOW", "2031-02-03T04:05:06Z")
    load_source_db(landing, SourceLoadPlan("r1", TZ, warehouse_path=wh))
    orders = [
        (100, 1, "paid", "10.00", ts(5), ts(5)),  # read again, unchanged
        (103, 1, "refunded", "40.00", ts(8), ts(8)),  # changed, same cursor value
        (104, 1, "paid", "5.00", ts(3), ts(9)),  # new
    ]
    land_run(landing, "r2", ts(21), u=[], p=[], o=orders, i=[], item_keys=[1000, 1002])
    monkeypatch.setenv("NIGHTSHIFT_NOW", "2031-02-04T00:00:00+01:00")
    load_source_db(landing, SourceLoadPlan("r2", TZ, warehouse_path=wh))
    first = dt.datetime(2031, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    second = dt.datetime(2031, 2, 3, 23, 0, tzinfo=dt.UTC)
    assert q(wh, "select id, _run_id, _loaded_at from raw.orders order by id") == [
        (100, "r2", first),
        (101, "r1", first),
        (102, "r1", first),
        (103, "r2", second),
        (104, "r2", second),
    ]
    assert q(wh, "select distinct _loaded_at from raw.users") == [(first,)]
    assert q(wh, "select distinct deleted_at from ops.deleted_rows") == [(second,)]


def test_newest_version_wins_over_an_older_delta(two_runs) -> None:
    landing, wh = two_runs
    load_source_db(landing, SourceLoadPlan("r1", TZ, warehouse_path=wh))
    # r2 carries an older version of order 100 than raw holds: raw keeps the newer one
    land_run(
        landing,
        "r2",
        ts(21),
        u=[],
        p=[],
        o=[(100, 1, "pending", "10.00", ts(5), ts(4))],
        i=[],
        item_keys=[1000, 1001, 1002],
    )
    result = load_source_db(landing, SourceLoadPlan("r2", TZ, warehouse_path=wh))
    assert q(wh, "select status, _run_id from raw.orders where id = 100") == [("paid", "r1")]
    assert result["restated_days"] == []


def test_reload_of_the_same_run_changes_nothing(two_runs) -> None:
    landing, wh = two_runs
    first = load_source_db(landing, SourceLoadPlan("r1", TZ, warehouse_path=wh))
    state = {
        t: q(wh, f"select * from {t} order by all")
        for t in ("raw.orders", "raw.order_items", "ops.loaded_runs", "ops.restated_days")
    }
    assert load_source_db(landing, SourceLoadPlan("r1", TZ, warehouse_path=wh)) == first
    assert {t: q(wh, f"select * from {t} order by all") for t in state} == state


def test_failed_load_changes_nothing(two_runs) -> None:
    landing, wh = two_runs
    load_source_db(landing, SourceLoadPlan("r1", TZ, warehouse_path=wh))
    land_run(
        landing,
        "r2",
        ts(21),
        u=[],
        p=[],
        o=[(100, 1, "refunded", "10.00", ts(5), ts(9))],
        i=[],
        item_keys=[1000],
    )
    bad = landing / "source_db" / "order_items" / "run=r2" / "part-00000.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(LoadError, match=r"raw\.order_items.*run=r2"):
        load_source_db(landing, SourceLoadPlan("r2", TZ, warehouse_path=wh))
    assert q(wh, "select status from raw.orders where id = 100") == [("paid",)]
    assert q(wh, "select count(*) from raw.order_items") == [(3,)]
    assert last_watermark(wh, "source_db", "orders").run_id == "r1"
    assert q(wh, "select count(*) from ops.restated_days where run_id = 'r2'") == [(0,)]


def test_stale_run_is_refused(two_runs) -> None:
    landing, wh = two_runs
    load_source_db(landing, SourceLoadPlan("r1", TZ, warehouse_path=wh))
    land_run(landing, "r0", ts(19), u=[], p=[], o=[], i=[], item_keys=[])
    with pytest.raises(LoadError, match=r"run=r0 was extracted .* before the already loaded run"):
        load_source_db(landing, SourceLoadPlan("r0", TZ, warehouse_path=wh))
    assert q(wh, "select count(*) from raw.order_items") == [(3,)]


def test_missing_key_set_is_an_error(two_runs) -> None:
    landing, wh = two_runs
    keys_dir = landing / "source_db" / "order_items__keys" / "run=r1"
    for f in keys_dir.iterdir():
        f.unlink()
    keys_dir.rmdir()
    with pytest.raises(LoadError, match=r"order_items__keys.*does not exist"):
        load_source_db(landing, SourceLoadPlan("r1", TZ, warehouse_path=wh))


@pytest.mark.parametrize(
    ("run_id", "tables"),
    [("../../etc", ("orders",)), ("r1", ("secrets",)), ("r1", ("payments",))],
)
def test_rejects_bad_run_ids_and_tables(two_runs, run_id, tables) -> None:
    landing, wh = two_runs
    with pytest.raises(LoadError):
        load_source_db(landing, SourceLoadPlan(run_id, TZ, warehouse_path=wh, tables=tables))
    assert not wh.exists()


def test_payments_and_fx_rates_merge(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    wh = tmp_path / "warehouse.duckdb"

    def payments(rows):
        return pa.table(
            {
                "id": pa.array([r[0] for r in rows], pa.string()),
                "order_id": pa.array([1] * len(rows), pa.int64()),
                "amount": pa.array([Decimal("1.00")] * len(rows), pa.decimal128(18, 2)),
                "status": pa.array([r[1] for r in rows], pa.string()),
                "updated_at": pa.array([r[2] for r in rows], TS),
            }
        )

    def fx(rows):
        return pa.table(
            {
                "rate_date": pa.array([r[0] for r in rows], pa.date32()),
                "base": pa.array(["USD"] * len(rows), pa.string()),
                "currency": pa.array([r[1] for r in rows], pa.string()),
                "rate": pa.array([Decimal(r[2]) for r in rows], pa.decimal128(38, 18)),
            }
        )

    d1, d2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    land(landing, "payments_api", "payments", "r1", payments([("a", "succeeded", ts(1))]))
    land(landing, "payments_api", "fx_rates", "r1", fx([(d1, "EUR", "0.9"), (d1, "USD", "1")]))
    assert load_payments_api(wh, landing, "r1")["raw_rows"] == {"payments": 1, "fx_rates": 2}
    land(
        landing,
        "payments_api",
        "payments",
        "r2",
        payments([("a", "refunded", ts(3)), ("a", "succeeded", ts(1)), ("b", "failed", ts(2))]),
    )
    land(landing, "payments_api", "fx_rates", "r2", fx([(d1, "EUR", "0.9"), (d2, "EUR", "0.8")]))
    assert load_payments_api(wh, landing, "r2")["raw_rows"] == {"payments": 2, "fx_rates": 3}
    assert q(wh, "select id, status from raw.payments order by id") == [
        ("a", "refunded"),
        ("b", "failed"),
    ]
    assert q(
        wh, "select rate from raw.fx_rates where rate_date = ? and currency = 'EUR'", [d2]
    ) == [(Decimal("0.800000000000000000"),)]
    assert last_watermark(wh, "payments_api", "payments") is None  # no window in manifest
    assert q(wh, "select count(*) from ops.loaded_runs where source = 'payments_api'") == [(4,)]


# --------------------------------------------------------------------------- sharded runs


def land_shard(
    landing: Path,
    run_id: str,
    shard: str,
    extract_id: str,
    window_end: dt.datetime,
    *,
    u: list[tuple],
    p: list[tuple],
    o: list[tuple],
    i: list[tuple],
    item_keys: list[int] | None,
) -> dict:
    """One shard's part of a sharded run, as `extract_sharded_source` lands it."""
    from extract.db_extract import shard_run_id

    part = shard_run_id(run_id, shard)
    extra = {
        "window_end": window_end.isoformat(),
        "shard": shard,
        "extract_id": extract_id,
        "shard_map": {"version": 1},
    }
    tables = {}
    for name, data, more in (
        ("users", users(u), {}),
        ("products", products(p), {}),
        ("orders", orders(o), {}),
        ("order_items", items(i), {"reconcile_deletes": True}),
    ):
        tables[name] = land(landing, "source_db", name, part, data, **extra, **more)
    if item_keys is not None:
        land(
            landing,
            "source_db",
            "order_items__keys",
            part,
            keys(item_keys),
            mode="key_set",
            **extra,
        )
    return {"name": shard, "landing_run_id": part, "tables": tables}


def write_record(landing: Path, run_id: str, extract_id: str, shards: list[dict]) -> None:
    from core.files import write_json_atomic
    from extract.db_extract import shard_run_record_path

    write_json_atomic(
        shard_run_record_path(landing, run_id),
        {
            "run_id": run_id,
            "extract_id": extract_id,
            "shard_map": {
                "version": 1,
                "shards": [{"name": s["name"], "vshards": [[0, 1]]} for s in shards],
            },
            "shards": [{"name": s["name"], "landing_run_id": s["landing_run_id"]} for s in shards],
        },
    )


def test_sharded_run_merges_all_shards_in_one_load(tmp_path: Path) -> None:
    from warehouse.load import load_source_db_sharded

    landing, wh = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    common = {"u": [(1, "EU", ts(1))], "p": [(1, "toys", ts(1))]}
    a = land_shard(
        landing, "d1", "s0", "x1", ts(3),
        o=[(10, 1, "paid", "5.00", ts(1), ts(2))],
        i=[(100, 10, 1, ts(2)), (102, 10, 1, ts(2))],
        item_keys=[100, 102],
        **common,
    )  # fmt: skip
    b = land_shard(
        landing, "d1", "s1", "x1", ts(3, 13),
        o=[(11, 1, "paid", "6.00", ts(1), ts(2))],
        i=[(101, 11, 1, ts(2))],
        item_keys=[101],
        u=[], p=[],
    )  # fmt: skip
    with pytest.raises(LoadError, match="no complete sharded extract"):
        load_source_db_sharded(landing, SourceLoadPlan("d1", TZ, warehouse_path=wh))
    write_record(landing, "d1", "x1", [a, b])
    result = load_source_db_sharded(landing, SourceLoadPlan("d1", TZ, warehouse_path=wh))
    assert result["shards"] == ["s0", "s1"]
    assert sorted(q(wh, "select id from raw.orders")) == [(10,), (11,)]
    assert sorted(q(wh, "select id from raw.order_items")) == [(100,), (101,), (102,)]
    marks = q(
        wh,
        "select table_name, shard, window_end from ops.loaded_runs where run_id = 'd1' "
        "order by 1, 2",
    )
    assert {(t, s) for t, s, _ in marks} == {
        (t, s) for t in ("users", "products", "orders", "order_items") for s in ("s0", "s1")
    }
    assert last_watermark(wh, "source_db", "orders", "s1").window_end == ts(3, 13)
    assert last_watermark(wh, "source_db", "orders", "s0").window_end == ts(3)
    assert last_watermark(wh, "source_db", "orders") is None  # no unsharded watermark
    # loading again changes nothing
    assert (
        load_source_db_sharded(landing, SourceLoadPlan("d1", TZ, warehouse_path=wh))["raw_rows"]
        == result["raw_rows"]
    )

    # d2: order 11 was copied to s0 during a reshard (older copy) and updated in s1; the
    # newest version wins and it is not doubled. Item 102 is gone from every key set.
    a = land_shard(
        landing, "d2", "s0", "x2", ts(5),
        o=[(11, 1, "paid", "6.00", ts(1), ts(2))],
        i=[], item_keys=[100], u=[], p=[],
    )  # fmt: skip
    b = land_shard(
        landing, "d2", "s1", "x2", ts(5),
        o=[(11, 1, "refunded", "6.00", ts(1), ts(4))],
        i=[], item_keys=[101], u=[], p=[],
    )  # fmt: skip
    write_record(landing, "d2", "x2", [a, b])
    result = load_source_db_sharded(landing, SourceLoadPlan("d2", TZ, warehouse_path=wh))
    assert q(wh, "select id, status from raw.orders where id = 11") == [(11, "refunded")]
    assert result["deleted"]["order_items"] == 1
    assert sorted(q(wh, "select id from raw.order_items")) == [(100,), (101,)]


def test_sharded_deletes_need_every_shards_key_set(tmp_path: Path, caplog) -> None:
    from warehouse.load import load_source_db_sharded

    landing, wh = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    empty = {"u": [], "p": [], "o": []}
    a = land_shard(
        landing, "d1", "s0", "x1", ts(3), i=[(100, 10, 1, ts(2))], item_keys=[100], **empty
    )
    b = land_shard(
        landing, "d1", "s1", "x1", ts(3), i=[(101, 11, 1, ts(2))], item_keys=[101], **empty
    )
    write_record(landing, "d1", "x1", [a, b])
    load_source_db_sharded(landing, SourceLoadPlan("d1", TZ, warehouse_path=wh))
    # d2: s1's key set is missing: nothing is deleted (s0's keys alone would delete 101)
    a = land_shard(landing, "d2", "s0", "x2", ts(4), i=[], item_keys=[], **empty)
    b = land_shard(landing, "d2", "s1", "x2", ts(4), i=[], item_keys=None, **empty)
    write_record(landing, "d2", "x2", [a, b])
    with caplog.at_level("WARNING"):
        result = load_source_db_sharded(landing, SourceLoadPlan("d2", TZ, warehouse_path=wh))
    assert result["deleted"]["order_items"] == 0
    assert sorted(q(wh, "select id from raw.order_items")) == [(100,), (101,)]
    assert "deletes are skipped" in caplog.text and "s1" in caplog.text
    # a part from another extract attempt is refused
    land_shard(landing, "d3", "s0", "x3", ts(5), i=[], item_keys=[], **empty)
    b = land_shard(landing, "d3", "s1", "other", ts(5), i=[], item_keys=[], **empty)
    write_record(landing, "d3", "x3", [a | {"landing_run_id": "d3.shard-s0"}, b])
    with pytest.raises(LoadError, match="not part of the extract"):
        load_source_db_sharded(landing, SourceLoadPlan("d3", TZ, warehouse_path=wh))


def test_source_columns_that_are_not_identifiers_are_loaded(two_runs) -> None:
    """An extra source column named `order-ref` (or with spaces, quotes, upper case) is
    tolerated: landed, added to raw as it is named, merged like any other column."""
    landing, wh = two_runs
    load_source_db(landing, SourceLoadPlan("r1", TZ, warehouse_path=wh))
    odd = ["order-ref", "Order Ref", 'say "hi"', "UPPER"]
    data = orders([(100, 1, "paid", "10.00", ts(5), ts(21))])
    for name in odd:
        data = data.append_column(name, pa.array([f"v-{name}"], pa.string()))
    land(landing, "source_db", "orders", "r2", data, window_end=ts(22).isoformat())
    for table, rows in (("users", users([])), ("products", products([]))):
        land(landing, "source_db", table, "r2", rows, window_end=ts(22).isoformat())
    land(
        landing,
        "source_db",
        "order_items",
        "r2",
        items([]),
        reconcile_deletes=True,
        window_end=ts(22).isoformat(),
    )
    land(landing, "source_db", "order_items__keys", "r2", keys([1000, 1001, 1002]), mode="key_set")
    load_source_db(landing, SourceLoadPlan("r2", TZ, warehouse_path=wh))
    columns = [r[0] for r in q(wh, "select column_name from (describe raw.orders)")]
    assert all(name in columns for name in odd)
    assert q(wh, 'select "order-ref", "say ""hi""" from raw.orders where id = 100') == [
        ("v-order-ref", 'v-say "hi"')
    ]
    assert q(wh, 'select count(*) from raw.orders where "order-ref" is null') == [(3,)]


def test_a_widened_numeric_widens_raw_and_accepted_drift_is_recorded(two_runs) -> None:
    landing, wh = two_runs
    load_source_db(landing, SourceLoadPlan("r1", TZ, warehouse_path=wh))
    wide = orders([(100, 1, "paid", "10.00", ts(5), ts(21))])
    wide = wide.set_column(4, "total", pa.array([Decimal("123456789012.34")], pa.decimal128(14, 2)))
    extra = {"window_end": ts(22).isoformat()}
    land(landing, "source_db", "orders", "r2", wide, **extra)
    land(landing, "source_db", "users", "r2", users([]), **extra)
    # products.category retyped, accepted by the operator: recorded with the load
    cats = products([]).set_column(1, "category", pa.array([], pa.int64()))
    write_landing_table(
        cats,
        schema=cats.schema,
        target=LandingTarget(
            landing_root=landing, source="source_db", table_name="products", run_id="r2"
        ),
        options=LandingOptions(
            cursor_column="updated_at",
            extra_manifest={
                "mode": "incremental",
                "key": "id",
                "cursor_key": "updated_at",
                **extra,
            },
            accept_drift=["products.category"],
        ),
    )
    land(landing, "source_db", "order_items", "r2", items([]), reconcile_deletes=True, **extra)
    land(landing, "source_db", "order_items__keys", "r2", keys([1000, 1001, 1002]), mode="key_set")
    load_source_db(landing, SourceLoadPlan("r2", TZ, warehouse_path=wh))
    load_source_db(landing, SourceLoadPlan("r2", TZ, warehouse_path=wh))  # a reload records it once
    assert q(wh, "select column_type from (describe raw.orders) where column_name = 'total'") == [
        ("DECIMAL(14,2)",)
    ]
    assert q(wh, "select total from raw.orders where id = 100") == [(Decimal("123456789012.34"),)]
    overrides = q(wh, "select run_id, guard, table_name, details from ops.guard_overrides")
    assert [o[:3] for o in overrides] == [("r2", "schema_drift", "products")]
    assert '"new_type": "int64"' in overrides[0][3] and '"name": "category"' in overrides[0][3]


def test_the_load_prunes_the_bookkeeping_of_runs_past_ops_history_days(tmp_path: Path) -> None:
    """ops.restated_days/restated_orders/deleted_rows keep `ops_history_days` days of runs
    before the loading run's day (pruned in the load's transaction); 0 keeps them all."""
    landing = tmp_path / "landing"
    pruned, kept = tmp_path / "pruned.duckdb", tmp_path / "kept.duckdb"
    runs = ["2026-01-01", "2026-02-15", "2026-03-01", "2026-03-20"]
    for n, run_id in enumerate(runs):
        order = 100 + n
        land_run(
            landing,
            run_id,
            ts(20 + n),
            u=[(1, "EU", ts(1))],
            p=[(10, "books", ts(1))],
            o=[(order, 1, "paid", "10.00", ts(5 + n), ts(5 + n))],
            i=[(order * 10, order, 10, ts(5 + n))],
            item_keys=[order * 10],  # the earlier runs' items are deleted
        )
        plan = SourceLoadPlan(run_id, TZ, warehouse_path=pruned, ops_history_days=30)
        load_source_db(landing, plan)
        load_source_db(landing, SourceLoadPlan(run_id, TZ, warehouse_path=kept))
        if run_id == "2026-03-01":  # 2026-01-01 is past 30 days, 2026-02-15 is not
            days = q(pruned, "select distinct run_id from ops.restated_days order by 1")
            assert days == [("2026-02-15",), ("2026-03-01",)]
    # the first load records days only; every later run deletes the previous run's item
    every = {"restated_days": runs, "restated_orders": runs[1:], "deleted_rows": runs[1:]}
    for table, run_ids in every.items():
        sql = f"select distinct run_id from ops.{table} order by 1"
        assert q(pruned, sql) == [("2026-03-01",), ("2026-03-20",)], table
        assert q(kept, sql) == [(r,) for r in run_ids], table
