"""Sharded extraction against several real PostgreSQL databases: every key exactly once,
in parallel, and a reshard (copy → publish → delete) causes no duplicates and no gaps."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from extract.shards import (
    ShardExtractError,
    ShardMap,
    ShardMapError,
    extract_sharded,
    newly_assigned_vshards,
    normalize_ranges,
    plan_shard_reads,
    shard_predicate,
    subtract_ranges,
    vshard_of,
    watermark_shard_key,
)
from extract.sql_binds import driver_filter
from migrate.resharding import copy_vshards, delete_vshards, move_vshards
from tests.servers import free_port, fresh_database

DDL = (
    "create table orders (id bigint primary key, status text not null, "
    "updated_at timestamptz not null)"
)
MOVED = (768, 1023)  # the vshards a reshard moves from s1 to the new database


@pytest.fixture
def three_dbs(postgres_admin_url: str) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(fresh_database(postgres_admin_url)) for _ in range(3)]
        for url in urls:
            engine = sa.create_engine(url)
            with engine.begin() as conn:
                conn.execute(sa.text(DDL))
            engine.dispose()
        yield urls


class Engines:
    """One engine per URL for the whole test (thread-safe pools)."""

    def __init__(self) -> None:
        self._engines: dict[str, sa.Engine] = {}
        self._lock = threading.Lock()

    def __call__(self, url: str) -> sa.Engine:
        with self._lock:
            if url not in self._engines:
                self._engines[url] = sa.create_engine(url, pool_size=10)
            return self._engines[url]

    def dispose(self) -> None:
        for e in self._engines.values():
            e.dispose()


@pytest.fixture
def engines() -> Iterator[Engines]:
    e = Engines()
    yield e
    e.dispose()


class App:
    """The application: writes each key to the database that owns it under its map."""

    def __init__(self, shard_map: ShardMap, engines: Engines) -> None:
        self.map = shard_map
        self.engines = engines
        self.truth: dict[int, tuple[str, datetime]] = {}  # the logical table

    def write(self, key: int, status: str) -> None:
        self.write_many([key], status)

    def write_many(self, keys, status: str) -> None:
        """One transaction per owning database."""
        by_url: dict[str, list[int]] = {}
        for key in keys:
            by_url.setdefault(self.map.shard_for_key(key).resolve_url(), []).append(key)
        for url, group in by_url.items():
            with self.engines(url).begin() as conn:
                for key in group:
                    updated_at = conn.execute(
                        sa.text(
                            "insert into orders (id, status, updated_at) "
                            "values (:id, :status, clock_timestamp()) on conflict (id) do update "
                            "set status = excluded.status, updated_at = excluded.updated_at "
                            "returning updated_at"
                        ),
                        {"id": key, "status": status},
                    ).scalar_one()
                    self.truth[key] = (status, updated_at)


def make_read_fn(engines: Engines, calls: list | None = None):
    def read_fn(shard: str, url: str, sql: str, params: dict) -> list[tuple]:
        with engines(url).connect() as conn:
            rows = conn.execute(
                sa.text(f"select id, status, updated_at from orders where {sql}"), params
            ).all()
        if calls is not None:
            calls.append(shard)
        return [tuple(r) for r in rows]

    return read_fn


class Warehouse:
    """The loader's merge: upsert by key, newest updated_at wins."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str, datetime]] = {}

    def merge_extract(self, results) -> None:
        keys = [row[0] for res in results for row in res.value]
        dupes = [k for k in set(keys) if keys.count(k) > 1] if len(keys) != len(set(keys)) else []
        assert not dupes, f"keys read twice in one extract: {sorted(dupes)[:10]}"
        for res in results:
            for key, status, updated_at in res.value:
                # and it was read from the shard that owns it under the run's map
                assert vshard_of(key) in _expand(res.vshards), (key, res.shard)
                old = self.rows.get(key)
                if old is None or updated_at > old[1]:
                    self.rows[key] = (status, updated_at)


def _expand(ranges) -> set[int]:
    return {v for lo, hi in ranges for v in range(lo, hi + 1)}


def _v1(urls: list[str]) -> ShardMap:
    return ShardMap.from_dict(
        {
            "virtual_shards": 1024,
            "version": 1,
            "shards": [
                {"name": "s0", "url": urls[0], "vshards": [[0, 511]]},
                {"name": "s1", "url": urls[1], "vshards": [[512, 1023]]},
            ],
        }
    )


def _count_in(engines: Engines, url: str, ranges) -> int:
    sql, params = shard_predicate("id", ranges, "postgresql")
    with engines(url).connect() as conn:
        return conn.execute(sa.text(f"select count(*) from orders where {sql}"), params).scalar()


def _check(app: App, wh: Warehouse, shard_map: ShardMap, engines: Engines) -> None:
    results = extract_sharded(shard_map, make_read_fn(engines), max_workers=4)
    wh.merge_extract(results)
    missing = app.truth.keys() - wh.rows.keys()
    extra = wh.rows.keys() - app.truth.keys()
    stale = [k for k in app.truth if k in wh.rows and wh.rows[k] != app.truth[k]]
    assert not missing and not extra and not stale, (
        f"map v{shard_map.version}: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}, "
        f"stale {sorted(stale)[:5]}"
    )


# --------------------------------------------------------------------------- reshard


def test_reshard_copy_publish_delete_no_duplicates_no_gaps(
    three_dbs: list[str], engines: Engines
) -> None:
    db0, db1, db2 = three_dbs
    v1 = _v1(three_dbs)
    app = App(v1, engines)
    app.write_many(range(1, 3001), "pending")
    assert _count_in(engines, db0, [(0, 511)]) > 0 and _count_in(engines, db1, [(512, 1023)]) > 0
    wh = Warehouse()

    # 0. before the reshard
    _check(app, wh, v1, engines)

    # 1. copy the moved vshards s1 → db2, slowly, while an extract (map v1) runs and the
    #    application keeps writing (to db1, still the owner of the moved vshards)
    copied: list = []

    def copy() -> None:
        try:
            copied.append(
                copy_vshards(db1, db2, "orders", [MOVED], batch_size=50, pause_seconds=0.02)
            )
        except Exception as exc:  # surfaced below
            copied.append(exc)

    copier = threading.Thread(target=copy)
    copier.start()
    time.sleep(0.05)
    moved_keys = [k for k in range(1, 3001) if MOVED[0] <= k % 1024 <= MOVED[1]]
    during = extract_sharded(v1, make_read_fn(engines), max_workers=4)
    for key in moved_keys[:40]:
        app.write(key, "paid")
    assert copier.is_alive(), "the copy should still be running during the extract"
    copier.join()
    assert copied and not isinstance(copied[0], Exception), copied
    wh.merge_extract(during)
    _check(app, wh, v1, engines)  # after the copy: db2 holds copies, they are not read
    assert _count_in(engines, db2, [MOVED]) == len(moved_keys)

    # catch-up copy with the moved vshards' writes frozen (the reshard tool's job)
    copy_vshards(db1, db2, "orders", [MOVED])
    _check(app, wh, v1, engines)

    # 2. publish map v2: s1 loses MOVED, the new database s2 gets it
    v2 = move_vshards(v1, *MOVED, "s2", url=db2)
    assert v2.version == 2 and v2.vshards_of("s1") == ((512, 767),)
    assert v2.vshards_of("s2") == (MOVED,)
    # a run that started under v1 still reads MOVED from db1 (the rows linger there)
    # while the application already writes MOVED to db2: consistent with v1, no doubles
    gate = threading.Event()
    base = make_read_fn(engines)

    def held_read(shard, url, sql, params):
        if shard == "s1":
            gate.wait(10)
        return base(shard, url, sql, params)

    straddling: list = []
    t = threading.Thread(
        target=lambda: straddling.extend(extract_sharded(v1, held_read, max_workers=4))
    )
    t.start()
    app.map = v2
    for key in moved_keys[20:60]:
        app.write(key, "shipped")  # goes to db2 now
    new_keys = [k for k in range(3001, 6001) if MOVED[0] <= k % 1024 <= MOVED[1]][:30]
    for key in new_keys:
        app.write(key, "pending")  # new rows in the moved vshards, only in db2
    gate.set()
    t.join()
    wh.merge_extract(straddling)  # no key twice; it lacks db2's newest writes ...
    _check(app, wh, v2, engines)  # ... which the next run (map v2) brings: no gap

    # a read that ignored the map would double the moved rows: the predicate matters
    with engines(db1).connect() as c1, engines(db2).connect() as c2:
        in_db1 = {r[0] for r in c1.execute(sa.text("select id from orders"))}
        in_db2 = {r[0] for r in c2.execute(sa.text("select id from orders"))}
    assert len(in_db1 & in_db2) == len(moved_keys)

    app.write_many(moved_keys[::7], "delivered")
    _check(app, wh, v2, engines)

    # 3. delete the moved rows from db1
    deleted = delete_vshards(db1, "orders", [MOVED])
    assert deleted == len(moved_keys)
    assert _count_in(engines, db1, [MOVED]) == 0
    _check(app, wh, v2, engines)
    app.write_many(list(app.truth)[::50], "refunded")
    _check(app, wh, v2, engines)
    assert len(wh.rows) == 3000 + len(new_keys)


def test_per_shard_watermarks_and_vshards_moved_to_an_existing_shard(
    three_dbs: list[str], engines: Engines
) -> None:
    """vshards moved to a shard that already has a watermark keep their old updated_at:
    an incremental read from that watermark would miss them; the plan reads them in full."""
    db0, db1, _ = three_dbs
    v1 = _v1(three_dbs)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)

    def put(url: str, key: int, status: str, minutes: int) -> None:
        with engines(url).begin() as conn:
            conn.execute(
                sa.text(
                    "insert into orders values (:k, :s, :u) on conflict (id) do update "
                    "set status = excluded.status, updated_at = excluded.updated_at"
                ),
                {"k": key, "s": status, "u": t0 + timedelta(minutes=minutes)},
            )

    for url, name in ((db0, "s0"), (db1, "s1")):
        with engines(url).begin() as conn:
            conn.execute(
                sa.text("insert into orders values (:k, 'pending', :u)"),
                [{"k": k, "u": t0} for k in range(1, 2049) if v1.shard_for_key(k).name == name],
            )
    # each shard has its own watermark: s0 was last loaded later than s1
    watermarks = {watermark_shard_key("s0"): t0 + timedelta(minutes=100)}
    watermarks[watermark_shard_key("s1")] = t0 + timedelta(minutes=50)
    last_map = {"s0": v1, "s1": v1}
    # a change in a moved vshard on s1, after s1's watermark, not yet extracted
    changed = 1000  # vshard 1000, in MOVED
    put(db1, changed, "paid", 60)

    # move MOVED from s1 to the EXISTING s0: copy (updated_at preserved), publish
    copy_vshards(db1, db0, "orders", [MOVED])
    v2 = move_vshards(v1, *MOVED, "s0")
    assert newly_assigned_vshards(v1, v2, "s0") == (MOVED,)
    assert newly_assigned_vshards(v1, v2, "s1") == ()
    plans = plan_shard_reads(v2, last_map)
    assert plans["s0"].full_vshards == (MOVED,)
    assert plans["s0"].incremental_vshards == ((0, 511),)
    assert plans["s1"].incremental_vshards == ((512, 767),) and plans["s1"].full_vshards == ()

    def read_fn(shard, url, sql, params):
        plan = plans[shard]
        inc_sql, inc_params = shard_predicate("id", plan.incremental_vshards, "postgresql")
        full_sql, full_params = shard_predicate(
            "id", plan.full_vshards, "postgresql", param_prefix="full"
        )
        with engines(url).connect() as conn:
            rows = conn.execute(
                sa.text(
                    f"select id, status, updated_at from orders where {sql} and "
                    f"(({inc_sql} and updated_at > :wm) or {full_sql})"
                ),
                {**params, **inc_params, **full_params, "wm": watermarks[shard]},
            ).all()
        return [tuple(r) for r in rows]

    results = extract_sharded(v2, read_fn, max_workers=2)
    got = {row[0]: row[1] for res in results for row in res.value}
    assert got.get(changed) == "paid"
    keys = [row[0] for res in results for row in res.value]
    assert len(keys) == len(set(keys))
    assert set(keys) == {k for k in range(1, 2049) if MOVED[0] <= k % 1024 <= MOVED[1]}

    # the naive incremental read of s0 from its watermark would have missed the change
    naive_sql, naive_params = shard_predicate("id", v2.vshards_of("s0"), "postgresql")
    with engines(db0).connect() as conn:
        naive = conn.execute(
            sa.text(f"select id from orders where {naive_sql} and updated_at > :wm"),
            {**naive_params, "wm": watermarks["s0"]},
        ).all()
    assert changed not in {r[0] for r in naive}

    # after that run is loaded, its map is recorded: nothing is new any more
    again = plan_shard_reads(v2, {"s0": v2, "s1": v2})
    assert all(p.full_vshards == () for p in again.values())
    # a shard never loaded (or without a recorded map) is read in full
    assert plan_shard_reads(v2, {})["s1"].full_vshards == ((512, 767),)


# --------------------------------------------------------------------------- parallel


def test_shards_are_read_concurrently(three_dbs: list[str], engines: Engines) -> None:
    shard_map = ShardMap.from_dict(
        {
            "version": 1,
            "shards": [
                {"name": "a", "url": three_dbs[0], "vshards": [[0, 300]]},
                {"name": "b", "url": three_dbs[1], "vshards": [[301, 700]]},
                {"name": "c", "url": three_dbs[2], "vshards": [[701, 1023]]},
            ],
        }
    )
    for url in three_dbs:  # warm the pools so connecting is not measured
        with engines(url).connect() as conn:
            conn.execute(sa.text("select 1"))

    def read_fn(shard, url, sql, params):
        with engines(url).connect() as conn:
            conn.execute(sa.text("select pg_sleep(0.5)"))
            return conn.execute(
                sa.text(f"select count(*) from orders where {sql}"), params
            ).scalar()

    started = time.monotonic()
    results = extract_sharded(shard_map, read_fn, max_workers=3)
    wall = time.monotonic() - started
    assert [r.shard for r in results] == ["a", "b", "c"]
    assert max(r.started for r in results) < min(r.finished for r in results)  # overlap
    assert all(r.seconds >= 0.5 for r in results)
    assert wall < 1.4, wall  # serial would take >= 1.5 s

    # max_workers=1 is serial: no overlap
    serial = extract_sharded(shard_map, read_fn, max_workers=1)
    for a, b in itertools.pairwise(serial):
        assert a.finished <= b.started


def test_failure_names_the_shard_and_hides_the_password(
    three_dbs: list[str], engines: Engines
) -> None:
    dead = f"postgresql://u:hunter2@127.0.0.1:{free_port()}/nope"
    shard_map = ShardMap.from_dict(
        {
            "version": 7,
            "shards": [
                {"name": "good", "url": three_dbs[0], "vshards": [[0, 511]]},
                {"name": "broken", "url": dead, "vshards": [[512, 1023]]},
            ],
        }
    )

    def read_fn(shard, url, sql, params):
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text(f"select count(*) from orders where {sql}"), params)
        finally:
            engine.dispose()

    with pytest.raises(ShardExtractError) as err:
        extract_sharded(shard_map, read_fn, max_workers=2)
    assert "shard 'broken'" in str(err.value) and "good" not in str(err.value)
    assert list(err.value.failures) == ["broken"]
    assert [r.shard for r in err.value.results] == ["good"]
    assert "hunter2" not in str(err.value) and "hunter2" not in repr(shard_map)


# --------------------------------------------------------------------------- predicates


def test_predicate_shape_and_params() -> None:
    sql, params = shard_predicate("id", [[512, 767], [0, 10], [11, 20]], "postgresql")
    assert sql == (
        "((id % 1024) between :vs_lo_0 and :vs_hi_0 or (id % 1024) between :vs_lo_1 and :vs_hi_1)"
    )
    assert params == {"vs_lo_0": 0, "vs_hi_0": 20, "vs_lo_1": 512, "vs_hi_1": 767}
    assert shard_predicate("o.id", [[0, 1]], "oracle", virtual_shards=16)[0] == (
        "(mod(o.id, 16) between :vs_lo_0 and :vs_hi_0)"
    )
    assert shard_predicate("id", [], "sqlite") == ("(1 = 0)", {})
    assert driver_filter(*shard_predicate("id", [[0, 9]], "postgresql")) == (
        "((id %% 1024) between %(vs_lo_0)s and %(vs_hi_0)s)",
        {"vs_lo_0": 0, "vs_hi_0": 9},
    )  # the form the COPY reader's driver renders: `%` escaped, no casts appended
    with pytest.raises(ValueError, match="identifier"):
        shard_predicate("id; drop table x", [[0, 1]], "postgresql")


@pytest.mark.parametrize("backend", ["sqlite", "mariadb", "postgresql"])
def test_predicate_selects_exactly_the_vshards(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'p.db'}"
    else:
        url = request.getfixturevalue("mariadb_database" if backend == "mariadb" else "pg_database")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("create table t (id bigint primary key)"))
            conn.execute(
                sa.text("insert into t (id) values (:id)"), [{"id": k} for k in range(3000)]
            )
        ranges = [[5, 9], [1000, 1023]]
        sql, params = shard_predicate("id", ranges, engine.dialect.name)
        with engine.connect() as conn:
            got = {r[0] for r in conn.execute(sa.text(f"select id from t where {sql}"), params)}
        assert got == {k for k in range(3000) if 5 <= k % 1024 <= 9 or k % 1024 >= 1000}
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the map


def _map(shards, n=1024, version=1):
    return ShardMap.from_dict({"virtual_shards": n, "version": version, "shards": shards})


def test_map_validation_errors() -> None:
    with pytest.raises(ShardMapError, match=r"unassigned: 512-599"):
        _map(
            [
                {"name": "a", "url": "sqlite://", "vshards": [[0, 511]]},
                {"name": "b", "url": "sqlite://", "vshards": [[600, 1023]]},
            ]
        )
    with pytest.raises(ShardMapError, match=r"vshards 500-511 assigned to both 'a' and 'b'"):
        _map(
            [
                {"name": "a", "url": "sqlite://", "vshards": [[0, 511]]},
                {"name": "b", "url": "sqlite://", "vshards": [[500, 1023]]},
            ]
        )
    with pytest.raises(ShardMapError, match="repeated: a"):
        _map(
            [
                {"name": "a", "url": "sqlite://", "vshards": [[0, 511]]},
                {"name": "a", "url": "sqlite://", "vshards": [[512, 1023]]},
            ]
        )
    with pytest.raises(ShardMapError, match=r"outside \[0, 1023\]: a: \[0, 1024\]"):
        _map([{"name": "a", "url": "sqlite://", "vshards": [[0, 1024]]}])
    with pytest.raises(ShardMapError, match="exactly one of 'url' or 'conn_id'"):
        _map([{"name": "a", "url": "sqlite://", "conn_id": "x", "vshards": [[0, 1023]]}])
    with pytest.raises(ShardMapError, match="lo > hi"):
        _map([{"name": "a", "url": "sqlite://", "vshards": [[9, 0]]}])
    with pytest.raises(ShardMapError, match="unknown shard map key"):
        ShardMap.from_dict({"version": 1, "shards": [], "shard": []})
    with pytest.raises(ShardMapError, match="no 'version'"):
        ShardMap.from_dict({"shards": []})
    # a valid 4-vshard map, ranges normalised
    m = _map(
        [
            {"name": "a", "url": "sqlite://", "vshards": [[2, 2], [0, 1]]},
            {"name": "b", "url": "sqlite://", "vshards": [[3, 3]]},
        ],
        n=4,
    )
    assert m.vshards_of("a") == ((0, 2),) and m.shard_for_key(7).name == "b"


def test_map_files_and_conn_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB_SHARD1", "postgresql://u:pw@h1:5432/app")
    data = {
        "virtual_shards": 1024,
        "version": 3,
        "shards": [
            {"name": "s0", "url": "postgresql://u:pw@h0/app", "vshards": [[0, 511]]},
            {"name": "s1", "conn_id": "source_db_shard1", "vshards": [[512, 1023]]},
        ],
    }
    (tmp_path / "m.json").write_text(json.dumps(data))
    (tmp_path / "m.yaml").write_text(
        "virtual_shards: 1024\nversion: 3\nshards:\n"
        "  - {name: s0, url: 'postgresql://u:pw@h0/app', vshards: [[0, 511]]}\n"
        "  - {name: s1, conn_id: source_db_shard1, vshards: [[512, 1023]]}\n"
    )
    a, b = ShardMap.load(tmp_path / "m.json"), ShardMap.load(tmp_path / "m.yaml")
    assert a == b and a.to_dict() == data and ShardMap.from_dict(a.to_dict()) == a
    assert a.shard("s1").resolve_url() == "postgresql://u:pw@h1:5432/app"
    assert "pw" not in json.dumps(a.to_public_dict())
    (tmp_path / "bad.yaml").write_text("version: 1\nshards: [{name: a, url: x, vshards: [[0, 5]]}]")
    with pytest.raises(ShardMapError, match=r"bad.yaml: .*unassigned: 6-1023"):
        ShardMap.load(tmp_path / "bad.yaml")


def test_range_helpers() -> None:
    assert normalize_ranges([[5, 9], [0, 4], [20, 30], [25, 40]]) == ((0, 9), (20, 40))
    assert subtract_ranges([[0, 1023]], [[100, 199], [500, 500]]) == (
        (0, 99),
        (200, 499),
        (501, 1023),
    )
    assert subtract_ranges([[0, 10]], [[0, 10]]) == ()
    m1 = _map([{"name": "a", "url": "sqlite://", "vshards": [[0, 1023]]}])
    m2 = move_vshards(m1, 0, 99, "b", url="sqlite://")
    assert m2.vshards_of("a") == ((100, 1023),) and m2.vshards_of("b") == ((0, 99),)
    m3 = move_vshards(m2, 50, 99, "a")  # back to an existing shard
    assert m3.version == 3 and m3.vshards_of("a") == ((50, 1023),)
    assert newly_assigned_vshards(m2, m3, "a") == ((50, 99),)
    assert newly_assigned_vshards(None, m3, "b") == ((0, 49),)
    assert watermark_shard_key("s1") == "s1"
