"""A sharded source end to end through the nightly steps on real PostgreSQL.

The logical `source_db` is spread over several databases by a virtual-shard map
(`SOURCE_DB_SHARD_MAP`). `pipeline.nightly.extract_source_db` + `load_source_db` (GX
gate included) + `publish` must leave `raw.*` equal to the union of the shards, exactly
(no missing, no duplicated keys, newest values), after every run: incremental runs with
application writes in between, a reshard to a new database (copy → publish the new map
→ run → delete from the old shard → run), vshards moved to an existing shard (read in
full once), and a shard that is down (the error names it; nothing is published).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from demo.generator import generate
from demo.schema import metadata
from extract.db_extract import read_shard_run_record, shard_run_id
from extract.landing import run_dir
from extract.shards import (
    ShardExtractError,
    ShardMap,
    shard_predicate,
)
from migrate.resharding import copy_vshards, delete_vshards, move_vshards
from pipeline import nightly
from tests.servers import fresh_database
from warehouse.load import LoadError

END = date(2026, 11, 20)  # the generated history ends here; runs are the days after
TABLES = {
    "users": ("email", "full_name", "region", "created_at", "updated_at"),
    "products": ("sku", "name", "category", "price", "updated_at"),
    "orders": ("user_id", "status", "currency", "total", "created_at", "updated_at"),
    "order_items": ("order_id", "product_id", "quantity", "unit_price", "updated_at"),
}
MOVED = (768, 1023)  # reshard: these vshards move from s1 to a new database (s2)
TO_EXISTING = (256, 511)  # then these move from s0 to the existing s1


@pytest.fixture
def dbs(postgres_admin_url: str) -> Iterator[list[str]]:
    """Three databases with the source schema; the generated history split over the
    first two by vshard (s0: 0-511, s1: 512-1023), the third empty (the reshard target)."""
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(fresh_database(postgres_admin_url)) for _ in range(3)]
        generate(urls[0], seed=21, days=4, end_date=END, orders_per_day=60, if_exists="replace")
        for url in urls[1:]:
            engine = sa.create_engine(url)
            metadata.create_all(engine)
            engine.dispose()
        for table in TABLES:
            copy_vshards(urls[0], urls[1], table, [(512, 1023)])
            delete_vshards(urls[0], table, [(512, 1023)])
        yield urls


def _plain(url: str) -> str:
    """postgresql:// as a user writes it (the pipeline adds the driver)."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def write_map(path: Path, data: dict) -> ShardMap:
    shard_map = ShardMap.from_dict(data)  # valid, or the test is wrong
    path.write_text(json.dumps(data))
    return shard_map


def map_data(shard_map: ShardMap) -> dict:
    return shard_map.to_dict()


class Source:
    """The logical source: reads each shard's own vshards; the application's writes go to
    the database that owns the key under the current map."""

    def __init__(self, shard_map: ShardMap) -> None:
        self.map = shard_map
        self._engines: dict[str, sa.Engine] = {}
        self.next_id = 10_000_000

    def engine(self, url: str) -> sa.Engine:
        if url not in self._engines:
            self._engines[url] = sa.create_engine(url)
        return self._engines[url]

    def owner(self, key: int) -> sa.Engine:
        return self.engine(self.map.shard_for_key(key).resolve_url())

    def dispose(self) -> None:
        for engine in self._engines.values():
            engine.dispose()

    def state(self) -> dict[str, dict[int, tuple]]:
        """Every table as {id: row}, each vshard from the shard that owns it (asserts no
        key is in two shards' owned vshards, which the map guarantees)."""
        out: dict[str, dict[int, tuple]] = {t: {} for t in TABLES}
        for shard in self.map.shards:
            if not shard.vshards:
                continue
            pred, params = shard_predicate("id", shard.vshards, "postgresql")
            with self.engine(shard.resolve_url()).connect() as conn:
                for table, cols in TABLES.items():
                    rows = conn.execute(
                        sa.text(f"select id, {', '.join(cols)} from {table} where {pred}"), params
                    ).all()
                    for row in rows:
                        assert row[0] not in out[table], (table, row[0])
                        out[table][row[0]] = _norm(cols, row[1:])
        return out

    def ids(self, table: str) -> list[int]:
        return sorted(self.state()[table])

    def app_writes(self, seed: int) -> dict[str, list[int]]:
        """A day of application writes: new users/orders/items in every shard, status
        updates, a region move, a category move and hard-deleted items."""
        state = self.state()
        orders_ids = sorted(state["orders"])
        items_ids = sorted(state["order_items"])
        new_orders = []
        for i in range(12):  # spread over the vshards: every shard gets some
            key = self.next_id + i * 97 + seed
            new_orders.append(key)
        self.next_id += 2000
        user_id = sorted(state["users"])[seed % len(state["users"])]
        product_id = sorted(state["products"])[seed % len(state["products"])]
        for n, key in enumerate(new_orders):
            with self.owner(key).begin() as conn:
                conn.execute(
                    sa.text(
                        "insert into orders (id, user_id, status, currency, total, created_at, "
                        "updated_at) values (:id, :u, 'paid', 'EUR', :t, clock_timestamp(), "
                        "clock_timestamp())"
                    ),
                    {"id": key, "u": user_id, "t": Decimal("10.50") + n},
                )
            item = key + 1  # an item key of its own (any shard)
            with self.owner(item).begin() as conn:
                conn.execute(
                    sa.text(
                        "insert into order_items (id, order_id, product_id, quantity, "
                        "unit_price, updated_at) values (:id, :o, :p, 2, 3.25, clock_timestamp())"
                    ),
                    {"id": item, "o": key, "p": product_id},
                )
        updated = orders_ids[seed :: max(1, len(orders_ids) // 15)][:15]
        for key in updated:
            with self.owner(key).begin() as conn:
                conn.execute(
                    sa.text(
                        "update orders set status = 'refunded', updated_at = clock_timestamp() "
                        "where id = :id"
                    ),
                    {"id": key},
                )
        deleted = items_ids[seed + 3 :: max(1, len(items_ids) // 6)][:6]
        for key in deleted:
            with self.owner(key).begin() as conn:
                conn.execute(sa.text("delete from order_items where id = :id"), {"id": key})
        with self.owner(user_id).begin() as conn:
            conn.execute(
                sa.text(
                    "update users set region = :r, updated_at = clock_timestamp() where id = :id"
                ),
                {"r": f"R{seed}", "id": user_id},
            )
        with self.owner(product_id).begin() as conn:
            conn.execute(
                sa.text(
                    "update products set category = :c, updated_at = clock_timestamp() "
                    "where id = :id"
                ),
                {"c": f"cat{seed}", "id": product_id},
            )
        return {"new_orders": new_orders, "updated": updated, "deleted_items": deleted}


def _norm(cols, values) -> tuple:
    out = []
    for col, value in zip(cols, values, strict=True):
        if value is not None and col in ("total", "unit_price", "price"):
            value = Decimal(str(value)).quantize(Decimal("0.01"))
        out.append(value)
    return tuple(out)


def raw_state(warehouse: Path) -> dict[str, dict[int, tuple]]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        out = {}
        for table, cols in TABLES.items():
            rows = con.execute(f"select id, {', '.join(cols)} from raw.{table}").fetchall()
            keys = [r[0] for r in rows]
            assert len(keys) == len(set(keys)), f"raw.{table} has duplicated keys"
            out[table] = {r[0]: _norm(cols, r[1:]) for r in rows}
        return out
    finally:
        con.close()


def assert_same(source: Source, warehouse: Path, label: str) -> None:
    want, got = source.state(), raw_state(warehouse)
    for table in TABLES:
        missing = want[table].keys() - got[table].keys()
        extra = got[table].keys() - want[table].keys()
        stale = [k for k in want[table] if k in got[table] and got[table][k] != want[table][k]]
        assert not missing and not extra and not stale, (
            f"{label}: raw.{table}: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}, "
            f"stale {sorted(stale)[:5]}"
        )
        assert want[table], f"{label}: {table} is empty: the check would be vacuous"


def run_day(day: date) -> tuple[dict, dict]:
    extracted = nightly.extract_source_db(day)
    loaded = nightly.load_source_db(day)
    nightly.publish(day)
    return extracted, loaded


def manifest(landing: Path, table: str, day: date, shard: str) -> dict:
    directory = run_dir(landing, "source_db", table, shard_run_id(nightly.run_id_for(day), shard))
    return json.loads((directory / "_manifest.json").read_text())


def landed_ids(landing: Path, table: str, day: date, shard: str) -> set[int]:
    directory = run_dir(landing, "source_db", table, shard_run_id(nightly.run_id_for(day), shard))
    return set(pq.read_table(directory, columns=["id"]).column("id").to_pylist())


def loaded_shards(warehouse: Path, day: date) -> dict[str, set[str]]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = con.execute(
            "select table_name, shard from ops.loaded_runs where source = 'source_db' "
            "and run_id = ?",
            [nightly.run_id_for(day)],
        ).fetchall()
    finally:
        con.close()
    out: dict[str, set[str]] = {}
    for table, shard in rows:
        out.setdefault(table, set()).add(shard)
    return out


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sharded_source_through_the_pipeline_with_reshards(
    dbs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db0, db1, db2 = dbs
    data_dir = tmp_path / "data"
    map_path = tmp_path / "shards.json"
    for name in ("WAREHOUSE_PATH", "LANDING_DIR", "REPORT_TZ", "AIRFLOW_CONN_SOURCE_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    monkeypatch.setenv("SOURCE_DB_SHARD_MAP", str(map_path))
    monkeypatch.setenv("SOURCE_DB_SHARD_WORKERS", "3")
    # s1 by Airflow connection id, s0 by URL: both forms of the map work
    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB_SHARD1", _plain(db1))
    v1 = write_map(
        map_path,
        {
            "virtual_shards": 1024,
            "version": 1,
            "shards": [
                {"name": "s0", "url": _plain(db0), "vshards": [[0, 511]]},
                {"name": "s1", "conn_id": "source_db_shard1", "vshards": [[512, 1023]]},
            ],
        },
    )
    landing = data_dir / "landing"
    warehouse = data_dir / "warehouse.duckdb"
    source = Source(v1)
    try:
        # ---- day 1: first run, every shard read in full, in parallel
        day = END + timedelta(days=1)
        extracted, loaded = run_day(day)
        assert_same(source, warehouse, "day 1")
        state = source.state()
        assert extracted["orders"] == len(state["orders"])
        assert loaded_shards(warehouse, day) == {t: {"s0", "s1"} for t in TABLES}
        for shard in ("s0", "s1"):
            m = manifest(landing, "orders", day, shard)
            assert m["shard"] == shard and m["window_start"] is None
            assert m["shard_map"]["version"] == 1
            assert "password" not in json.dumps(m["shard_map"])
        record = read_shard_run_record(landing, nightly.run_id_for(day))
        assert [s["name"] for s in record["shards"]] == ["s0", "s1"]

        # ---- day 2: application writes, incremental per shard, deletes from all key sets
        writes = source.app_writes(seed=1)
        day += timedelta(days=1)
        extracted, loaded = run_day(day)
        assert_same(source, warehouse, "day 2")
        for shard in ("s0", "s1"):
            m = manifest(landing, "orders", day, shard)
            assert m["window_start"] is not None and m["full_vshards"] == []
        assert extracted["orders"] < len(source.state()["orders"]) / 2
        assert loaded["deleted"]["order_items"] == len(writes["deleted_items"])
        assert loaded["restated_days"], "the changes restated no business day"

        # ---- reshard to a NEW database: copy MOVED s1 → db2 while the app writes to s1
        for table in TABLES:
            copy_vshards(db1, db2, table, [MOVED])
        source.app_writes(seed=2)  # still map v1: moved keys are written to db1
        for table in TABLES:  # catch-up under the write freeze (the reshard tool's job)
            copy_vshards(db1, db2, table, [MOVED])
        # a run between copy and publish uses map v1: reads MOVED from db1 only
        day += timedelta(days=1)
        run_day(day)
        assert_same(source, warehouse, "day 3 (copied, old map)")

        v2 = move_vshards(v1, *MOVED, "s2", url=_plain(db2))
        write_map(map_path, map_data(v2))
        source.map = v2
        writes = source.app_writes(seed=3)  # the app now writes MOVED to db2 only
        day += timedelta(days=1)
        run_day(day)
        assert_same(source, warehouse, "day 4 (new map, old copies still in db1)")
        m = manifest(landing, "orders", day, "s2")
        assert m["window_start"] is None and m["shard_map"]["version"] == 2  # new shard: full
        assert manifest(landing, "orders", day, "s1")["vshards"] == [[512, 767]]
        s1_ids = landed_ids(landing, "orders", day, "s1")
        assert not [k for k in s1_ids if MOVED[0] <= k % 1024 <= MOVED[1]]
        assert loaded_shards(warehouse, day)["orders"] == {"s0", "s1", "s2"}

        # step 3: delete the lingering copies from db1 (a v2 run has been loaded)
        for table in TABLES:
            delete_vshards(db1, table, [MOVED])
        source.app_writes(seed=4)
        day += timedelta(days=1)
        run_day(day)
        assert_same(source, warehouse, "day 5 (old copies deleted)")

        # ---- vshards moved to an EXISTING shard: s0 → s1, read in full there once
        for table in TABLES:
            copy_vshards(db0, db1, table, [TO_EXISTING])
        v3 = move_vshards(v2, *TO_EXISTING, "s1")
        write_map(map_path, map_data(v3))
        source.map = v3
        source.app_writes(seed=5)
        day += timedelta(days=1)
        run_day(day)
        assert_same(source, warehouse, "day 6 (vshards moved to an existing shard)")
        m = manifest(landing, "orders", day, "s1")
        assert m["full_vshards"] == [list(TO_EXISTING)] and m["window_start"] is not None
        moved_in_db1 = {
            k for k in source.state()["orders"] if TO_EXISTING[0] <= k % 1024 <= TO_EXISTING[1]
        }
        assert moved_in_db1 <= landed_ids(landing, "orders", day, "s1")
        for table in TABLES:
            delete_vshards(db0, table, [TO_EXISTING])
        source.app_writes(seed=6)
        day += timedelta(days=1)
        run_day(day)
        assert_same(source, warehouse, "day 7")
        m = manifest(landing, "orders", day, "s1")
        assert m["full_vshards"] == []  # read in full once only

        # ---- a shard is down: the error names it, nothing is loaded or published
        before = file_digest(warehouse)
        down = v3.to_dict()
        down["version"] = 4
        for shard in down["shards"]:
            if shard["name"] == "s2":
                shard["url"] = _plain(sa.make_url(db2).set(database="nightshift_no_such_db"))
        write_map(map_path, down)
        source.app_writes(seed=7)
        day += timedelta(days=1)
        with pytest.raises(ShardExtractError, match="shard 's2'") as failure:
            nightly.extract_source_db(day)
        assert set(failure.value.failures) == {"s2"}
        assert read_shard_run_record(landing, nightly.run_id_for(day)) is None
        with pytest.raises((LoadError, FileNotFoundError), match="no complete sharded extract"):
            nightly.load_source_db(day)
        assert file_digest(warehouse) == before
        # the shard is back: the same day reruns and catches up
        write_map(map_path, {**v3.to_dict(), "version": 5})
        run_day(day)
        assert_same(source, warehouse, "after the shard came back")
    finally:
        source.dispose()


def test_a_password_in_the_query_string_is_never_stored(
    postgres_admin_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard URL with `?password=` (libpq takes it from the query string too): the
    extract connects with it, and neither the landed manifests, the run record nor the
    published warehouse (`ops.loaded_runs`, the shard map) hold it; a connection error
    naming it is masked."""
    secret = "qs-s3cret-4711"  # trust authentication: any password connects
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(fresh_database(postgres_admin_url)) for _ in range(2)]
        generate(urls[0], seed=7, days=2, end_date=END, orders_per_day=10, if_exists="replace")
        engine = sa.create_engine(urls[1])
        metadata.create_all(engine)
        engine.dispose()
        for table in TABLES:
            copy_vshards(urls[0], urls[1], table, [(512, 1023)])
            delete_vshards(urls[0], table, [(512, 1023)])
        data_dir, map_path = tmp_path / "data", tmp_path / "shards.json"
        for name in ("WAREHOUSE_PATH", "LANDING_DIR", "REPORT_TZ", "AIRFLOW_CONN_SOURCE_DB"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(data_dir))
        monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
        monkeypatch.setenv("SOURCE_DB_SHARD_MAP", str(map_path))
        write_map(
            map_path,
            {
                "virtual_shards": 1024,
                "version": 1,
                "shards": [
                    {
                        "name": f"s{i}",
                        "url": f"{_plain(url)}?sslmode=disable&password={secret}",
                        "vshards": [[512 * i, 512 * i + 511]],
                    }
                    for i, url in enumerate(urls)
                ],
            },
        )
        run_day(END + timedelta(days=1))
        stored = [p for p in data_dir.rglob("*") if p.is_file() and p.suffix != ".parquet"]
        assert any(p.name == "_manifest.json" for p in stored)
        leaked = [str(p) for p in stored if secret.encode() in p.read_bytes()]
        assert leaked == [], f"the query-string password is stored in {leaked}"
        con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
        try:
            maps = con.execute(
                "select json_extract_string(manifest, '$.shard_map') from ops.loaded_runs"
            ).fetchall()
        finally:
            con.close()
        assert maps and all("password=***" in m and secret not in m for (m,) in maps)

    from extract.shards import _masked

    url = f"postgresql://u:pw@h/db?password={secret}"
    masked = _masked(RuntimeError(f'connection failed: password="{secret}" and pw'), url)
    assert secret not in str(masked) and "pw" not in str(masked).replace("password", "")
