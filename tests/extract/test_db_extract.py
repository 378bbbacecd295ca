"""Incremental DB extract + merge (docs/extract-design.md) on SQLite, PostgreSQL, MariaDB."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from core.settings import sqlalchemy_url
from demo.generator import apply_next_day, generate
from demo.schema import order_items, orders, products, users
from extract.db_extract import ExtractPlan, ShardReadPolicy, _to_utc, extract_tables
from extract.landing import run_dir
from extract.tables import (
    DEFAULT_TABLES,
    TableConfig,
    TableConfigError,
    apply_overrides,
    load_table_configs,
)
from extract.watermark import last_watermark, record_loaded
from tests.sqlite_shards import split_sqlite_source
from warehouse.load import SourceLoadPlan, load_source_db

END = date(2026, 11, 20)  # in the past: the source clock (U) is after every generated row
TABLES = {
    "users": (users, ("region", "updated_at")),
    "products": (products, ("category", "updated_at")),
    "orders": (orders, ("user_id", "status", "currency", "total", "created_at", "updated_at")),
    "order_items": (
        order_items,
        ("order_id", "product_id", "quantity", "unit_price", "updated_at"),
    ),
}
MONEY = {"total", "unit_price"}
TIMES = {"created_at", "updated_at"}


def _norm(column: str, value):
    if value is None:
        return None
    if column in TIMES:
        return _to_utc(value)
    if column in MONEY:
        return Decimal(str(value)).quantize(Decimal("0.01"))
    return value


def source_state(url: str) -> dict[str, dict[int, tuple]]:
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            return {
                name: {
                    row[0]: tuple(_norm(c, v) for c, v in zip(cols, row[1:], strict=True))
                    for row in conn.execute(sa.select(table.c.id, *(table.c[c] for c in cols)))
                }
                for name, (table, cols) in TABLES.items()
            }
    finally:
        engine.dispose()


def raw_state(warehouse: Path) -> dict[str, dict[int, tuple]]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        out = {}
        for name, (_, cols) in TABLES.items():
            rows = con.execute(f"select id, {', '.join(cols)} from raw.{name}").fetchall()
            assert len(rows) == len({r[0] for r in rows}), f"raw.{name} has duplicate keys"
            out[name] = {
                r[0]: tuple(_norm(c, v) for c, v in zip(cols, r[1:], strict=True)) for r in rows
            }
        return out
    finally:
        con.close()


def landed_ids(landing: Path, table: str, run_id: str) -> set[int]:
    directory = run_dir(landing, "source_db", table, run_id)
    return set(pq.read_table(directory, columns=["id"]).column("id").to_pylist())


def cycle(url, landing, warehouse, run_id, configs=DEFAULT_TABLES, tz="UTC"):
    manifests = extract_tables(
        url,
        ExtractPlan(run_id=run_id, landing_root=landing, warehouse_path=warehouse, configs=configs),
    )
    return manifests, load_source_db(landing, SourceLoadPlan(run_id, tz, warehouse_path=warehouse))


def restated_by_reason(warehouse: Path, run_id: str) -> dict[str, set[date]]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = con.execute(
            "select reason, business_date from ops.restated_days where run_id = ?", [run_id]
        ).fetchall()
    finally:
        con.close()
    out: dict[str, set[date]] = {}
    for reason, day in rows:
        out.setdefault(reason, set()).add(day)
    return out


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def source_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.db'}"
    if request.param == "postgresql":
        return request.getfixturevalue("pg_database")
    return request.getfixturevalue("mariadb_database")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    generate(url, seed=5, days=3, end_date=END, orders_per_day=20, if_exists="replace")
    return url


def test_incremental_windows_deletes_and_restated_days(source_url: str, tmp_path: Path) -> None:
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    generate(source_url, seed=11, days=4, end_date=END, orders_per_day=25, if_exists="replace")

    # First run: no watermark, no lower bound: everything up to U lands.
    m1, _ = cycle(source_url, landing, warehouse, "r1")
    state1 = source_state(source_url)
    for table in TABLES:
        assert m1[table]["window_start"] is None
        assert m1[table]["mode"] == "incremental"
        assert landed_ids(landing, table, "r1") == set(state1[table])
    assert m1["order_items__keys"]["rows"] == len(state1["order_items"])
    assert raw_state(warehouse) == state1

    summary = apply_next_day(source_url, seed=12)
    m2, r2 = cycle(source_url, landing, warehouse, "r2")
    state2 = source_state(source_url)
    for table, (_, cols) in TABLES.items():
        start = datetime.fromisoformat(m2[table]["window_start"])
        # the window starts one overlap before what the last load had seen
        assert start == datetime.fromisoformat(m1[table]["max_cursor"]) - timedelta(minutes=15)
        assert datetime.fromisoformat(m2[table]["window_end"]) > start
        pos = cols.index("updated_at")
        want = {k for k, v in state2[table].items() if v[pos] > start}
        assert landed_ids(landing, table, "r2") == want, table
    # only the changes and the overlap, not the table
    assert m2["orders"]["rows"] < len(state2["orders"]) / 2
    assert raw_state(warehouse) == state2

    # hard-deleted items: removed from raw and logged
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        logged = con.execute(
            "select key from ops.deleted_rows where run_id = 'r2' and table_name = 'order_items'"
        ).fetchall()
    finally:
        con.close()
    assert summary["deleted_item_ids"]
    assert sorted(int(k) for (k,) in logged) == summary["deleted_item_ids"]
    assert r2["deleted"]["order_items"] == len(summary["deleted_item_ids"])

    # restated days (REPORT_TZ UTC = the generator's days), reason by reason
    touched = {
        kind: {date.fromisoformat(d) for d in days}
        for kind, days in summary["touched_days_by_kind"].items()
    }
    got = restated_by_reason(warehouse, "r2")
    assert got["order_new"] == touched["new_orders"] | touched["late_orders"]
    assert touched["late_orders"] and max(touched["late_orders"]) < date.fromisoformat(
        summary["date"]
    )
    assert got["order_changed"] == touched["status_updates"]
    assert got["item_deleted"] == touched["item_deletes"]
    assert got["user_region"] == touched["region_moves"]
    assert got["product_category"] == touched["category_moves"]
    assert got["items_changed"] <= got["order_new"]
    assert r2["restated_days"] == sorted({d.isoformat() for days in got.values() for d in days})


def test_watermark_advances_only_after_load(sqlite_url: str, tmp_path: Path) -> None:
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    m1 = extract_tables(
        sqlite_url, ExtractPlan(run_id="r1", landing_root=landing, warehouse_path=warehouse)
    )
    assert m1["orders"]["window_start"] is None
    # not loaded: the next run reads the same (unbounded) window again
    m2 = extract_tables(
        sqlite_url, ExtractPlan(run_id="r2", landing_root=landing, warehouse_path=warehouse)
    )
    assert m2["orders"]["window_start"] is None
    assert m2["orders"]["rows"] == m1["orders"]["rows"]
    assert last_watermark(warehouse, "source_db", "orders") is None
    load_source_db(landing, SourceLoadPlan("r2", "UTC", warehouse_path=warehouse))
    mark = last_watermark(warehouse, "source_db", "orders")
    assert mark.run_id == "r2"
    assert mark.window_end == datetime.fromisoformat(m2["orders"]["window_end"])
    m3 = extract_tables(
        sqlite_url, ExtractPlan(run_id="r3", landing_root=landing, warehouse_path=warehouse)
    )
    assert m3["orders"]["window_start"] is not None
    assert m3["orders"]["rows"] < m2["orders"]["rows"]


def test_rerun_of_a_run_id_replaces_its_landing(sqlite_url: str, tmp_path: Path) -> None:
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    cycle(sqlite_url, landing, warehouse, "r1")
    first = extract_tables(
        sqlite_url, ExtractPlan(run_id="r2", landing_root=landing, warehouse_path=warehouse)
    )
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(
            orders.update()
            .where(orders.c.id == 1)
            .values(status="refunded", updated_at=datetime(2026, 11, 21, 9, 0))
        )
    engine.dispose()
    second = extract_tables(
        sqlite_url, ExtractPlan(run_id="r2", landing_root=landing, warehouse_path=warehouse)
    )
    assert second["orders"]["window_start"] == first["orders"]["window_start"]
    assert second["orders"]["rows"] == first["orders"]["rows"] + 1
    runs = [
        p.name for p in (landing / "source_db" / "orders").iterdir() if p.name.startswith("run")
    ]
    assert sorted(runs) == ["run=r1", "run=r2"]
    assert 1 in landed_ids(landing, "orders", "r2")
    result = load_source_db(landing, SourceLoadPlan("r2", "UTC", warehouse_path=warehouse))
    assert raw_state(warehouse) == source_state(sqlite_url)
    assert "order_changed" in restated_by_reason(warehouse, "r2")
    # loading it again is a no-op
    assert load_source_db(landing, SourceLoadPlan("r2", "UTC", warehouse_path=warehouse)) == result
    assert raw_state(warehouse) == source_state(sqlite_url)


def test_full_mode_lands_everything_and_drops_deleted_rows(sqlite_url: str, tmp_path) -> None:
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    configs = apply_overrides({"tables": {"products": {"mode": "full"}}})
    cycle(sqlite_url, landing, warehouse, "r1", configs)
    apply_next_day(sqlite_url, seed=3)
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        gone = conn.execute(sa.select(sa.func.max(products.c.id))).scalar()
        conn.execute(products.delete().where(products.c.id == gone))
        n_products = conn.execute(sa.select(sa.func.count()).select_from(products)).scalar()
    engine.dispose()
    m2, r2 = cycle(sqlite_url, landing, warehouse, "r2", configs)
    assert m2["products"]["mode"] == "full"
    assert m2["products"]["window_start"] is None
    assert m2["products"]["rows"] == n_products
    assert m2["orders"]["window_start"] is not None
    assert r2["deleted"]["products"] == 1
    assert raw_state(warehouse) == source_state(sqlite_url)


def test_sqlite_text_timestamps_window_is_exact(tmp_path: Path) -> None:
    """Text timestamps in mixed ISO forms are compared as instants, not as strings."""
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    engine = sa.create_engine(url)
    rows = {
        1: "2026-11-20 10:00:00",  # == the lower bound: excluded
        2: "2026-11-20 10:00:00.000001",  # just after: in
        3: "2026-11-20T10:00:00Z",  # == bound, other form: excluded
        4: "2026-11-20T11:00:00.500000+01:00",  # 10:00:00.5 UTC: in
        5: "2026-11-20T09:59:59.999999+00:00",  # before: excluded
        6: "2026-11-20 09:59:59.9",  # before, short fraction: excluded
        7: None,  # untrackable: always read
        8: "2026-11-21T00:30:00-02:00",  # 02:30 next day UTC: in
        9: "2026-11-19 23:00:00-12:00",  # 11:00 UTC on the 20th: in (day prefix says 19th)
    }
    with engine.begin() as conn:
        conn.execute(
            sa.text("create table users (id integer primary key, region text, updated_at datetime)")
        )
        for key, value in rows.items():
            conn.execute(
                sa.text("insert into users values (:id, 'EU', :ts)"), {"id": key, "ts": value}
            )
    engine.dispose()
    warehouse = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(warehouse))
    record_loaded(
        con,
        source="source_db",
        table="users",
        run_id="r0",
        manifest={"mode": "incremental", "window_end": "2026-11-20T10:15:00+00:00", "rows": 0},
    )
    con.close()
    configs = [TableConfig("users", required_columns=("id", "region", "updated_at"))]
    m = extract_tables(
        url,
        ExtractPlan(
            run_id="r1",
            landing_root=tmp_path / "landing",
            warehouse_path=warehouse,
            configs=configs,
        ),
    )
    assert m["users"]["window_start"] == "2026-11-20T10:00:00+00:00"
    assert landed_ids(tmp_path / "landing", "users", "r1") == {2, 4, 7, 8, 9}
    table = pq.read_table(run_dir(tmp_path / "landing", "source_db", "users", "r1"))
    assert str(table.schema.field("updated_at").type) == "timestamp[us, tz=UTC]"
    got = dict(
        zip(table.column("id").to_pylist(), table.column("updated_at").to_pylist(), strict=True)
    )
    assert got[4] == datetime(2026, 11, 20, 10, 0, 0, 500000, tzinfo=UTC)


def test_config_overrides_and_errors(tmp_path: Path) -> None:
    defaults = {c.name: c for c in DEFAULT_TABLES}
    assert set(defaults) == {"users", "products", "orders", "order_items"}
    assert defaults["order_items"].reconcile_deletes is True
    assert not any(c.reconcile_deletes for n, c in defaults.items() if n != "order_items")
    assert all(
        c.overlap == timedelta(minutes=15) and c.mode == "incremental" for c in defaults.values()
    )

    path = tmp_path / "extract.yml"
    path.write_text(
        "tables:\n  orders:\n    mode: full\n    overlap_seconds: 5\n    parallel_ranges: 4\n"
    )
    configs = {c.name: c for c in load_table_configs(path)}
    assert configs["orders"].mode == "full"
    assert configs["orders"].overlap == timedelta(seconds=5)
    assert configs["orders"].parallel_ranges == 4
    assert configs["users"] == defaults["users"]
    assert load_table_configs(None) == DEFAULT_TABLES

    cases = [
        ({"tables": {"orders": {"mode": "fast"}}}, r"mode='fast'.*valid: incremental, full"),
        ({"tables": {"refunds": {}}}, r"unknown table 'refunds'; valid: users, products"),
        ({"tables": {"orders": {"window": 3}}}, r"unknown setting\(s\) window; valid: key"),
        ({"tables": {"orders": {"parallel_ranges": 0}}}, r"parallel_ranges=0 must be"),
        ({"tables": {"orders": {"overlap_minutes": -1}}}, r"overlap_minutes=-1"),
        ({"tables": {"orders": {"key": "id; drop"}}}, r"key='id; drop'"),
        ({"tables": {"orders": {"reconcile_deletes": "yes"}}}, r"reconcile_deletes='yes'"),
        ({"tabels": {}}, r"unknown key\(s\) tabels; valid: tables"),
    ]
    for overrides, message in cases:
        with pytest.raises(TableConfigError, match=message):
            apply_overrides(overrides)
    with pytest.raises(TableConfigError, match="does not exist"):
        load_table_configs(tmp_path / "missing.yml")


def test_sharded_extract_on_sqlite_shards(tmp_path: Path) -> None:
    """Two SQLite databases behind a vshard map: each shard read with its own predicate,
    window and key set; the sharded load equals the union (PostgreSQL end to end:
    tests/extract/test_sharded_pipeline.py)."""
    from extract.db_extract import extract_sharded_source, shard_run_id
    from warehouse.load import load_source_db_sharded

    a, b, shard_map = split_sqlite_source(tmp_path, seed=9, days=3, end_date=END, orders_per_day=30)
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"

    def union() -> dict[str, dict[int, tuple]]:
        sa_, sb = source_state(a), source_state(b)
        assert all(not (sa_[t].keys() & sb[t].keys()) for t in TABLES)
        return {t: {**sa_[t], **sb[t]} for t in TABLES}

    def run(run_id: str) -> dict:
        out = extract_sharded_source(
            shard_map,
            ExtractPlan(run_id=run_id, landing_root=landing, warehouse_path=warehouse),
            ShardReadPolicy(max_workers=2),
        )
        load_source_db_sharded(landing, SourceLoadPlan(run_id, "UTC", warehouse_path=warehouse))
        return out

    first = run("r1")
    assert first["rows"]["orders"] == len(union()["orders"])
    assert raw_state(warehouse) == union()
    keys_b = landed_ids(landing, "order_items__keys", shard_run_id("r1", "b"))
    assert keys_b and all(k % 1024 >= 64 for k in keys_b)

    # one update per shard, one hard delete in b: incremental per shard
    late = datetime(2026, 11, 25, 9, 0)
    for url, key in ((a, 1), (b, 64)):
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                orders.update().where(orders.c.id == key).values(status="refunded", updated_at=late)
            )
            if url == b:
                gone = conn.execute(sa.select(sa.func.min(order_items.c.id))).scalar()
                conn.execute(order_items.delete().where(order_items.c.id == gone))
        engine.dispose()
    second = run("r2")
    assert second["shards"]["a"]["orders"] < first["shards"]["a"]["orders"]
    assert 1 in landed_ids(landing, "orders", shard_run_id("r2", "a"))
    assert 64 in landed_ids(landing, "orders", shard_run_id("r2", "b"))
    assert raw_state(warehouse) == union()


def test_postgres_fast_path_lands_exactly_what_the_generic_reader_lands(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COPY fast path is the default on PostgreSQL and lands identical data."""
    import extract.db_extract as db_extract
    import extract.pg_copy as pg_copy

    generate(pg_database, seed=11, days=3, end_date=date(2026, 11, 20), orders_per_day=40)
    calls: list[str] = []
    real = pg_copy.copy_batches

    def counting(query, **kwargs):
        calls.append(query.table)
        yield from real(query, **kwargs)

    monkeypatch.setattr(pg_copy, "copy_batches", counting)
    fast = extract_tables(
        pg_database, ExtractPlan(run_id="fast", landing_root=tmp_path / "fast", warehouse_path=None)
    )
    generic = extract_tables(
        pg_database,
        ExtractPlan(
            run_id="generic",
            landing_root=tmp_path / "generic",
            warehouse_path=None,
            reader=db_extract.read_batches,
        ),
    )
    assert {"users", "products", "orders", "order_items"} <= set(calls)
    for table in ("users", "products", "orders", "order_items"):
        a = pq.read_table(run_dir(tmp_path / "fast", "source_db", table, "fast")).sort_by("id")
        b = pq.read_table(run_dir(tmp_path / "generic", "source_db", table, "generic")).sort_by(
            "id"
        )
        assert a.schema == b.schema, table
        assert a.equals(b), table
        assert fast[table]["rows"] == generic[table]["rows"] > 0
