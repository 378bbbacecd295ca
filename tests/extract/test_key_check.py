"""Hard deletes through source-side bucket summaries: the extract lands the summaries of
`order_items`' keys and the keys of the changed buckets only; the loader compares them
with the warehouse and deletes what the source no longer has (extract/key_check.py,
warehouse/load.py `_find_gone_by_summaries`). Real PostgreSQL source, DuckDB warehouse.
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from core.key_summary import WIDTH
from core.settings import sqlalchemy_url
from demo.generator import generate
from extract import key_check
from extract.db_extract import ExtractPlan, extract_tables
from extract.landing import run_dir
from warehouse.load import LoadError, SourceLoadPlan, load_source_db

END = date(2026, 11, 20)
ITEMS = "order_items"


@pytest.fixture
def source(pg_database: str) -> str:
    """A source whose `order_items` span ten buckets or more (keys 1..n)."""
    generate(pg_database, seed=31, days=12, end_date=END, orders_per_day=200)
    assert _source_keys(pg_database)[-1] > 10 * WIDTH
    return pg_database


def _sql(url: str, statement: str, **params) -> None:
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(statement), params)
    finally:
        engine.dispose()


def _source_keys(url: str) -> list[int]:
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text("select id from order_items order by id"))]
    finally:
        engine.dispose()


def _delete(url: str, *ids: int) -> None:
    _sql(url, "delete from order_items where id = any(:ids)", ids=list(ids))


def _insert(url: str, new_id: int, like: int = 1) -> None:
    """A new item `new_id`, a copy of item `like`, stamped now (the next window reads it)."""
    _sql(
        url,
        "insert into order_items (id, order_id, product_id, quantity, unit_price, updated_at) "
        "select :new_id, order_id, product_id, quantity, unit_price, "
        "now() at time zone 'utc' from order_items where id = :like",
        new_id=new_id,
        like=like,
    )


def _extract(url: str, landing: Path, warehouse: Path, run_id: str) -> dict:
    return extract_tables(
        url, ExtractPlan(run_id=run_id, landing_root=landing, warehouse_path=warehouse)
    )


def _raw_keys(warehouse: Path) -> set[int]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return {r[0] for r in con.execute("select id from raw.order_items").fetchall()}
    finally:
        con.close()


def _deleted(warehouse: Path, run_id: str) -> set[str]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = con.execute(
            "select key from ops.deleted_rows where run_id = ? and table_name = ?",
            [run_id, ITEMS],
        ).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def _landed_keys(landing: Path, run_id: str) -> set[int]:
    directory = run_dir(landing, "source_db", f"{ITEMS}__keys", run_id)
    return set(pq.read_table(directory).column("id").to_pylist())


def _first_night(url: str, landing: Path, warehouse: Path) -> dict:
    m = _extract(url, landing, warehouse, "r1")
    assert m[f"{ITEMS}__keys"]["keys"] == "all"  # nothing earlier to compare with
    assert m[f"{ITEMS}__keys"]["rows"] == len(_source_keys(url))
    load_source_db(landing, SourceLoadPlan("r1", "UTC", warehouse_path=warehouse))
    return m


def test_a_night_without_deletes_lands_only_the_changed_buckets_keys(
    source: str, tmp_path: Path
) -> None:
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    _first_night(source, landing, warehouse)
    m = _extract(source, landing, warehouse, "r2")  # nothing changed at the source
    assert m[f"{ITEMS}__keys"]["keys"] == "changed"
    assert m[f"{ITEMS}__keys"]["rows"] == 0
    ranges = m[f"{ITEMS}__key_ranges"]
    assert ranges["previous_run_id"] == "r1" and ranges["buckets_with_keys"] == 0
    assert ranges["buckets"] >= 10
    result = load_source_db(landing, SourceLoadPlan("r2", "UTC", warehouse_path=warehouse))
    assert result["deleted"][ITEMS] == 0
    assert _raw_keys(warehouse) == set(_source_keys(source))

    top = _source_keys(source)[-1]
    _insert(source, top + 1, like=top)  # a new item: its bucket only
    m = _extract(source, landing, warehouse, "r3")
    landed = _landed_keys(landing, "r3")
    assert top + 1 in landed
    assert landed == {k for k in _source_keys(source) if k // WIDTH == (top + 1) // WIDTH}
    assert m[f"{ITEMS}__key_ranges"]["buckets_with_keys"] == 1
    loaded = load_source_db(landing, SourceLoadPlan("r3", "UTC", warehouse_path=warehouse))
    assert loaded["deleted"][ITEMS] == 0
    assert _raw_keys(warehouse) == set(_source_keys(source))


def test_a_delete_in_old_history_is_found(source: str, tmp_path: Path) -> None:
    """Key 3 was untouched for nights; its bucket's summary changes, its keys land, the
    loader deletes it (and nothing else)."""
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    _first_night(source, landing, warehouse)
    for night in ("r2", "r3"):  # quiet nights
        _extract(source, landing, warehouse, night)
        load_source_db(landing, SourceLoadPlan(night, "UTC", warehouse_path=warehouse))
    _delete(source, 3)
    m = _extract(source, landing, warehouse, "r4")
    assert m[f"{ITEMS}__keys"]["keys"] == "changed"
    assert _landed_keys(landing, "r4") == {k for k in _source_keys(source) if k < WIDTH}
    result = load_source_db(landing, SourceLoadPlan("r4", "UTC", warehouse_path=warehouse))
    assert result["deleted"][ITEMS] == 1
    assert _deleted(warehouse, "r4") == {"3"}
    assert _raw_keys(warehouse) == set(_source_keys(source))


def test_insert_and_delete_in_one_bucket_and_a_compensated_delete_are_found(
    source: str, tmp_path: Path
) -> None:
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    _first_night(source, landing, warehouse)
    top = _source_keys(source)[-1]
    # the same bucket: the newest item deleted, a newer one inserted
    _delete(source, top)
    _insert(source, top + 1, like=top - 1)
    _extract(source, landing, warehouse, "r2")
    loaded = load_source_db(landing, SourceLoadPlan("r2", "UTC", warehouse_path=warehouse))
    assert loaded["deleted"][ITEMS] == 1
    assert _deleted(warehouse, "r2") == {str(top)}
    assert _raw_keys(warehouse) == set(_source_keys(source))

    # an old bucket: key 20 gone on one night, then key 10 deleted and 20 back on the
    # next: the bucket's count is what the warehouse has, its sums are not
    _delete(source, 20)
    _extract(source, landing, warehouse, "r3")
    load_source_db(landing, SourceLoadPlan("r3", "UTC", warehouse_path=warehouse))
    _delete(source, 10)
    _insert(source, 20, like=11)
    m = _extract(source, landing, warehouse, "r4")
    assert m[f"{ITEMS}__key_ranges"]["buckets_with_keys"] == 1
    result = load_source_db(landing, SourceLoadPlan("r4", "UTC", warehouse_path=warehouse))
    assert _deleted(warehouse, "r4") == {"10"}
    assert result["deleted"][ITEMS] == 1
    assert _raw_keys(warehouse) == set(_source_keys(source))


def test_an_unloaded_run_still_covers_the_night_after(source: str, tmp_path: Path) -> None:
    """r2 is landed but never loaded: r3 compared its summaries with r2's, so the bucket
    of the delete carries keys in r2 only; loading r3 reads them there."""
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    _first_night(source, landing, warehouse)
    _delete(source, 7)
    _extract(source, landing, warehouse, "r2")
    assert 7 not in _landed_keys(landing, "r2") and 8 in _landed_keys(landing, "r2")
    _extract(source, landing, warehouse, "r3")
    assert _landed_keys(landing, "r3") == set()
    result = load_source_db(landing, SourceLoadPlan("r3", "UTC", warehouse_path=warehouse))
    assert _deleted(warehouse, "r3") == {"7"}
    assert result["deleted"][ITEMS] == 1


def test_a_lost_run_fails_the_load_and_the_rerun_lands_every_key(
    source: str, tmp_path: Path
) -> None:
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    _first_night(source, landing, warehouse)
    _delete(source, 7)
    _extract(source, landing, warehouse, "r2")  # the delete's bucket lands its keys here
    _extract(source, landing, warehouse, "r3")  # ... and not here: same summary as r2
    for table in (f"{ITEMS}__keys", f"{ITEMS}__key_ranges"):  # r2 is lost
        shutil.rmtree(run_dir(landing, "source_db", table, "r2"))

    with pytest.raises(LoadError, match=rf"{ITEMS}.*\[0, {WIDTH - 1}\].*rerun the night"):
        load_source_db(landing, SourceLoadPlan("r3", "UTC", warehouse_path=warehouse))
    assert 7 in _raw_keys(warehouse)  # nothing merged
    assert key_check.full_key_set_requested(landing, ITEMS) is not None

    m = _extract(source, landing, warehouse, "r3")  # the rerun: every key lands
    assert m[f"{ITEMS}__keys"]["keys"] == "all"
    assert m[f"{ITEMS}__keys"]["rows"] == len(_source_keys(source))
    assert key_check.full_key_set_requested(landing, ITEMS) is None
    result = load_source_db(landing, SourceLoadPlan("r3", "UTC", warehouse_path=warehouse))
    assert _deleted(warehouse, "r3") == {"7"}
    assert result["deleted"][ITEMS] == 1
    assert _raw_keys(warehouse) == set(_source_keys(source))

    _extract(source, landing, warehouse, "r4")  # and the night after is partial again
    assert _landed_keys(landing, "r4") == set()


def test_the_summaries_are_compared_in_a_postgres_warehouse_too(
    source: str, pg_warehouse_url: str, tmp_path: Path
) -> None:
    """The warehouse side of the summaries on PostgreSQL: same buckets, same deletes."""
    from warehouse.backends.postgres import PostgresWarehouse

    landing = tmp_path / "landing"
    warehouse = PostgresWarehouse(pg_warehouse_url, schemas=("raw", "ops"))
    build = warehouse.begin_build("keys")

    def night(run_id: str) -> dict:
        # no DuckDB file: every night reads every row, the key check is the same
        m = _extract(source, landing, None, run_id)
        result = load_source_db(
            landing, SourceLoadPlan(run_id, "UTC", warehouse=warehouse, build=build)
        )
        return {"landed": m, **result}

    assert night("r1")["landed"][f"{ITEMS}__keys"]["keys"] == "all"
    top = _source_keys(source)[-1]
    _delete(source, 3, top)
    _insert(source, top + 1, like=top - 1)
    second = night("r2")
    assert second["landed"][f"{ITEMS}__keys"]["keys"] == "changed"
    assert second["deleted"][ITEMS] == 2
    with warehouse.transaction(build) as s:
        raw = {r[0] for r in s.fetchall("select id from {raw}.order_items")}
        deleted = {r[0] for r in s.fetchall("select key from {ops}.deleted_rows")}
    assert raw == set(_source_keys(source))
    assert deleted == {"3", str(top)}


@pytest.fixture(params=["sqlite", "mariadb"])
def other_source(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'source.db'}"
    else:
        url = request.getfixturevalue("mariadb_database")
    generate(url, seed=31, days=12, end_date=END, orders_per_day=200, if_exists="replace")
    return url


def test_sqlite_and_mariadb_sources_land_the_same_summaries(
    other_source: str, tmp_path: Path
) -> None:
    """Their integer division and modulo differ from PostgreSQL's: the buckets and the
    sums the loader recomputes in DuckDB must still agree, and the delete be found."""
    from demo.schema import order_items

    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    _first_night(other_source, landing, warehouse)
    engine = sa.create_engine(sqlalchemy_url(other_source))
    try:
        with engine.begin() as conn:
            conn.execute(order_items.delete().where(order_items.c.id == 3))
    finally:
        engine.dispose()
    m = _extract(other_source, landing, warehouse, "r2")
    assert m[f"{ITEMS}__keys"]["keys"] == "changed"
    assert _landed_keys(landing, "r2") == {k for k in _source_keys(other_source) if k < WIDTH}
    loaded = load_source_db(landing, SourceLoadPlan("r2", "UTC", warehouse_path=warehouse))
    assert loaded["deleted"][ITEMS] == 1
    assert _deleted(warehouse, "r2") == {"3"}
    assert _raw_keys(warehouse) == set(_source_keys(other_source))
