"""The warehouse interface on a real PostgreSQL (warehouse/backends).

Every test gets a fresh database. Loads and merges are compared with the Parquet they
came from; publish is checked by a reader thread looping analyst queries during repeated
publishes (it must never see a missing table or two generations at once), by a build
abandoned and a build whose process is SIGKILLed (the published schemas stay as they
were), and by two builds of the same published state (the second publish conflicts).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from core import settings
from warehouse.backends import backend_for, resolve
from warehouse.backends.base import PublishConflictError, Warehouse
from warehouse.backends.duckdb import DuckDBWarehouse
from warehouse.backends.postgres import PostgresWarehouse, libpq_url

SCHEMAS = ("raw", "ops", "analytics")
PROJECT_ROOT = Path(__file__).resolve().parents[2]

ORDERS_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("user_id", pa.int64()),
        ("total", pa.decimal128(12, 2)),
        ("status", pa.string()),
        ("order-ref", pa.string()),
        ("paid", pa.bool_()),
        ("score", pa.float64()),
        ("order_date", pa.date32()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _orders(ids: range, *, version: int = 0) -> pa.Table:
    base = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    rows = [
        {
            "id": i,
            "user_id": i % 7,
            "total": Decimal(f"{i}.{(i + version) % 100:02d}"),
            "status": None if i % 11 == 0 else ("" if i % 13 == 0 else f's,"{version}"\n{i}'),
            "order-ref": f"R-{i}",
            "paid": i % 2 == 0,
            "score": None if i % 5 == 0 else i / 3,
            "order_date": dt.date(2026, 11, 1) + dt.timedelta(days=i % 30),
            "updated_at": base + dt.timedelta(minutes=i, days=version),
        }
        for i in ids
    ]
    return pa.Table.from_pylist(rows, schema=ORDERS_SCHEMA)


def _write(table: pa.Table, path: Path, row_group_size: int = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _sorted(table: pa.Table, key: str = "id") -> pa.Table:
    return table.sort_by(key)


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return libpq_url(pg_database)


@pytest.fixture
def wh(pg_url: str) -> PostgresWarehouse:
    return PostgresWarehouse(pg_url, schemas=SCHEMAS)


def test_postgres_backend_is_a_warehouse(wh: PostgresWarehouse, tmp_path: Path) -> None:
    assert isinstance(wh, Warehouse)
    assert isinstance(DuckDBWarehouse(tmp_path / "w.duckdb"), Warehouse)


def test_load_parquet_copies_every_row_and_type(wh: PostgresWarehouse, tmp_path: Path) -> None:
    expected = _orders(range(1, 5001))
    files = [
        _write(expected.slice(0, 3000), tmp_path / "part-00000.parquet"),
        _write(expected.slice(3000), tmp_path / "part-00001.parquet"),
    ]
    build = wh.begin_build("2026-11-18")
    assert wh.load_parquet(build, "raw", "orders", files) == 5000
    got = wh.read_arrow("select * from {raw}.orders", build=build)
    assert got.schema == ORDERS_SCHEMA
    assert _sorted(got).equals(_sorted(expected))
    # not visible before publish; after it, the same rows under the published name
    assert (
        wh.read_arrow("select count(*) as n from pg_tables where schemaname = ?", ["raw"])
        .column("n")[0]
        .as_py()
        == 0
    )
    wh.publish(build)
    assert _sorted(wh.read_arrow("select * from raw.orders")).equals(_sorted(expected))
    # replace: the table holds the files' rows only
    build = wh.begin_build("2026-11-19")
    assert wh.load_parquet(build, "raw", "orders", files[1:], replace=True) == 2000
    n = wh.read_arrow("select count(*) as n from {raw}.orders", build=build)
    assert n.column("n")[0].as_py() == 2000


def test_merge_updates_and_inserts_by_key(wh: PostgresWarehouse, tmp_path: Path) -> None:
    first = _orders(range(1, 1001))
    build = wh.begin_build("day1")
    wh.load_parquet(build, "raw", "orders", [_write(first, tmp_path / "d1.parquet")])
    wh.publish(build)

    # day 2: ids 900..1100 changed or new, id 950 twice (the newest updated_at wins)
    changed = _orders(range(900, 1101), version=1)
    stale = _orders(range(950, 951), version=0)
    newest = _orders(range(950, 951), version=2)
    delta = _write(
        pa.concat_tables([stale, changed.filter(pc.not_equal(changed["id"], 950)), newest]),
        tmp_path / "d2.parquet",
    )
    build = wh.begin_build("day2")
    result = wh.merge_parquet(build, "raw", "orders", [delta], ["id"], cursor="updated_at")
    assert (result.updated, result.inserted) == (101, 100)
    deleted = wh.delete_keys(
        build, "raw", "orders", pa.table({"id": pa.array([1, 2, 3], pa.int64())})
    )
    assert deleted == 3
    wh.publish(build)

    expected = {r["id"]: r for r in first.to_pylist() if r["id"] not in (1, 2, 3)}
    expected.update({r["id"]: r for r in changed.to_pylist()})
    expected[950] = newest.to_pylist()[0]
    got = wh.read_arrow("select * from raw.orders order by id")
    assert got.to_pylist() == [expected[k] for k in sorted(expected)]


def test_merge_a_row_without_cursor_never_beats_a_dated_one(
    wh: PostgresWarehouse, tmp_path: Path
) -> None:
    rows = _orders(range(1, 3)).to_pylist()
    undated = dict(rows[0], updated_at=None, status="undated")
    delta = pa.Table.from_pylist([undated, rows[0], rows[1]], schema=ORDERS_SCHEMA)
    build = wh.begin_build("day1")
    result = wh.merge_parquet(
        build, "raw", "orders", [_write(delta, tmp_path / "d.parquet")], ["id"], cursor="updated_at"
    )
    assert (result.inserted, result.updated) == (2, 0)
    got = wh.read_arrow("select id, status from {raw}.orders order by id", build=build)
    assert got.to_pylist() == [{"id": r["id"], "status": r["status"]} for r in rows]


def _generation_tables(wh: PostgresWarehouse, build, generation: int, rows: int) -> None:
    """Both analytics tables of a build hold `generation` in every row."""
    for table in ("sales_summary", "daily_sales"):
        wh.execute(f"drop table if exists {{analytics}}.{table}", build=build)
        wh.execute(
            f"create table {{analytics}}.{table} as "
            "select g as id, ?::bigint as generation, (g * 1.5)::numeric(18,2) as total_sales_usd "
            "from generate_series(1, ?) g",
            [generation, rows],
            build=build,
        )


def test_publish_swaps_every_schema_atomically_for_readers(
    wh: PostgresWarehouse, pg_url: str
) -> None:
    rows = 2000
    build = wh.begin_build("gen-0")
    _generation_tables(wh, build, 0, rows)
    wh.execute("create table {ops}.pipeline_runs (run_id text, generation bigint)", build=build)
    wh.execute("insert into {ops}.pipeline_runs values ('gen-0', 0)", build=build)
    wh.publish(build)

    stop = threading.Event()
    seen: list[tuple[int, ...]] = []
    errors: list[BaseException] = []
    waits: list[float] = []

    def reader() -> None:
        con = psycopg.connect(pg_url, autocommit=True)
        try:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    row = con.execute(
                        "select (select count(*) from analytics.sales_summary), "
                        "(select sum(generation) from analytics.sales_summary), "
                        "(select count(*) from analytics.daily_sales), "
                        "(select sum(generation) from analytics.daily_sales), "
                        "(select max(generation) from ops.pipeline_runs)"
                    ).fetchone()
                except BaseException as exc:  # a missing table fails the test
                    errors.append(exc)
                    return
                waits.append(time.perf_counter() - started)
                seen.append(tuple(int(v) for v in row))
        finally:
            con.close()

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    publishes = 12
    try:
        for generation in range(1, publishes + 1):
            build = wh.begin_build(f"gen-{generation}")
            _generation_tables(wh, build, generation, rows)
            wh.execute(
                "insert into {ops}.pipeline_runs values (?, ?)",
                [f"gen-{generation}", generation],
                build=build,
            )
            wh.publish(build)
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    assert len(seen) > publishes
    generations = set()
    for count_a, sum_a, count_b, sum_b, ops_generation in seen:
        assert count_a == count_b == rows
        assert sum_a % rows == 0 and sum_a == sum_b, "a reader saw two generations at once"
        assert ops_generation == sum_a // rows, "analytics and ops from different publishes"
        generations.add(sum_a // rows)
    assert len(generations) >= 3, generations  # the reader really ran across publishes
    assert wh.generation() == publishes + 1
    runs = wh.read_arrow("select generation from ops.pipeline_runs order by 1")
    assert runs.column("generation").to_pylist() == list(range(0, publishes + 1))
    leftovers = wh.read_arrow("select nspname from pg_namespace where nspname like ?", ["%\\_\\_%"])
    assert leftovers.num_rows == 0
    print(
        f"\nREADER queries={len(seen)} generations_seen={len(generations)} "
        f"max_wait_ms={max(waits) * 1000:.1f}"
    )
    # a reader waits at most lock_timeout plus the swap (generous bound: a loaded CI box)
    assert max(waits) < 5.0


def _published(wh: PostgresWarehouse) -> list[dict]:
    return wh.read_arrow("select * from analytics.sales_summary order by id").to_pylist()


def test_abandoned_build_leaves_published_untouched(wh: PostgresWarehouse) -> None:
    build = wh.begin_build("day1")
    _generation_tables(wh, build, 1, 50)
    wh.publish(build)
    before = _published(wh)

    build = wh.begin_build("day2")
    _generation_tables(wh, build, 2, 70)
    wh.abandon_build(build)
    assert _published(wh) == before
    assert wh.generation() == 1
    schemas = wh.read_arrow(
        "select nspname from pg_namespace where nspname like ?", ["%\\_\\_build\\_%"]
    )
    assert schemas.num_rows == 0
    with pytest.raises(Exception, match="gone"):
        wh.publish(build)
    assert _published(wh) == before


KILLED_BUILD = textwrap.dedent(
    """
    import sys, time
    import psycopg
    from warehouse.backends.postgres import PostgresWarehouse

    wh = PostgresWarehouse(sys.argv[1], schemas=("raw", "ops", "analytics"))
    build = wh.begin_build("day2")
    wh.execute("delete from {analytics}.sales_summary", build=build)
    wh.execute("insert into {analytics}.sales_summary select g, 2, 0 from generate_series(1, 10) g",
               build=build)
    con = psycopg.connect(sys.argv[1])
    con.execute("delete from " + build.table("analytics", "daily_sales"))
    print("MIDBUILD", flush=True)
    time.sleep(60)
    """
)


def test_killed_build_leaves_published_untouched(wh: PostgresWarehouse, pg_url: str) -> None:
    build = wh.begin_build("day1")
    _generation_tables(wh, build, 1, 50)
    wh.publish(build)
    before = _published(wh)

    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILD, pg_url],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "MIDBUILD"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert _published(wh) == before
    daily = wh.read_arrow("select count(*) as n from analytics.daily_sales")
    assert daily.column("n")[0].as_py() == 50
    assert wh.generation() == 1
    # the next attempt of the run drops the killed attempt's schemas and publishes
    build = wh.begin_build("day2")
    stale = wh.read_arrow(
        "select count(*) as n from pg_namespace where nspname like ?",
        ["%\\_\\_build\\_%"],
    )
    assert stale.column("n")[0].as_py() == len(SCHEMAS)
    assert build.base == 1
    _generation_tables(wh, build, 2, 60)
    wh.publish(build)
    assert {r["generation"] for r in _published(wh)} == {2}


def test_publish_after_a_racing_publish_conflicts(wh: PostgresWarehouse) -> None:
    build = wh.begin_build("day1")
    _generation_tables(wh, build, 1, 10)
    wh.publish(build)

    scheduled = wh.begin_build("day2")
    rerun = wh.begin_build("day2-rerun")
    _generation_tables(wh, scheduled, 2, 20)
    _generation_tables(wh, rerun, 3, 30)
    wh.publish(scheduled)
    with pytest.raises(PublishConflictError, match="changed since build"):
        wh.publish(rerun)
    assert {r["generation"] for r in _published(wh)} == {2}
    assert len(_published(wh)) == 20
    wh.abandon_build(rerun)


def test_a_reader_holding_a_table_delays_the_publish_not_other_readers(
    wh: PostgresWarehouse, pg_url: str
) -> None:
    """A transaction holding a published table open: publish retries under lock_timeout
    instead of queueing the other readers behind it, and swaps once the holder ends."""
    build = wh.begin_build("day1")
    _generation_tables(wh, build, 1, 10)
    wh.publish(build)
    build = wh.begin_build("day2")
    _generation_tables(wh, build, 2, 10)

    holder = psycopg.connect(pg_url)
    holder.execute("select count(*) from analytics.sales_summary")  # AccessShare held
    hold_s = 1.5
    threading.Timer(hold_s, holder.rollback).start()
    stop = threading.Event()
    waits: list[float] = []

    def reader() -> None:
        with psycopg.connect(pg_url, autocommit=True) as con:
            while not stop.is_set():
                started = time.perf_counter()
                con.execute(
                    "select (select count(*) from analytics.sales_summary), "
                    "(select count(*) from analytics.daily_sales)"
                ).fetchone()
                waits.append(time.perf_counter() - started)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        started = time.perf_counter()
        wh.publish(build)
        assert time.perf_counter() - started >= hold_s - 0.1
    finally:
        stop.set()
        thread.join(10)
        holder.close()
    assert {r["generation"] for r in _published(wh)} == {2}
    assert len(waits) > 10
    print(f"\nREADER beside a held table: queries={len(waits)} max_wait_ms={max(waits) * 1000:.1f}")
    assert max(waits) < hold_s / 2, "readers queued behind a blocked publish"


# -- settings -------------------------------------------------------------------------


@pytest.fixture
def no_airflow_lookup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    monkeypatch.delenv("AIRFLOW_CONN_WAREHOUSE", raising=False)
    monkeypatch.delenv("DBT_TARGET", raising=False)
    monkeypatch.setenv("WAREHOUSE_PATH", str(tmp_path / "w.duckdb"))
    return monkeypatch


def test_unset_connection_is_the_duckdb_file(no_airflow_lookup: pytest.MonkeyPatch) -> None:
    assert settings.warehouse_url() is None
    assert resolve(settings) == ("duckdb", None)
    wh = backend_for(settings)
    assert isinstance(wh, DuckDBWarehouse)
    assert wh.path == settings.warehouse_path()
    no_airflow_lookup.setenv("DBT_TARGET", "duckdb")
    assert settings.warehouse_backend() == "duckdb"


def test_postgres_connection_selects_postgres(no_airflow_lookup: pytest.MonkeyPatch) -> None:
    for url in ("postgresql://u:pw@db:5432/wh", "postgres://u:pw@db/wh"):
        no_airflow_lookup.setenv("AIRFLOW_CONN_WAREHOUSE", url)
        assert settings.warehouse_backend() == "postgres"
        assert settings.warehouse_dbt_target() == "postgres"
        wh = backend_for(settings)
        assert isinstance(wh, PostgresWarehouse)
        assert "pw" not in wh.describe()


def test_dbt_target_disagreeing_with_the_warehouse_names_both(
    no_airflow_lookup: pytest.MonkeyPatch,
) -> None:
    no_airflow_lookup.setenv("AIRFLOW_CONN_WAREHOUSE", "postgresql://etl:Sup3rS3cret@db:5432/wh")
    no_airflow_lookup.setenv("DBT_TARGET", "duckdb")
    with pytest.raises(settings.ConfigError) as info:
        settings.warehouse_backend()
    message = str(info.value)
    assert "DBT_TARGET='duckdb'" in message and "AIRFLOW_CONN_WAREHOUSE" in message
    assert "postgres warehouse" in message and "db:5432/wh" in message
    assert "Sup3rS3cret" not in message
    with pytest.raises(settings.ConfigError):
        backend_for(settings)

    no_airflow_lookup.delenv("AIRFLOW_CONN_WAREHOUSE")
    no_airflow_lookup.setenv("DBT_TARGET", "postgres")
    with pytest.raises(settings.ConfigError, match="DBT_TARGET='postgres'.*WAREHOUSE_PATH"):
        settings.warehouse_backend()


def test_unknown_warehouse_scheme_is_refused_without_its_password(
    no_airflow_lookup: pytest.MonkeyPatch,
) -> None:
    no_airflow_lookup.setenv("AIRFLOW_CONN_WAREHOUSE", "mysql://u:Sup3rS3cret@db/wh")
    with pytest.raises(settings.ConfigError, match="scheme 'mysql'") as info:
        settings.warehouse_backend()
    assert "Sup3rS3cret" not in str(info.value)


# -- the DuckDB wrapper keeps today's behaviour -----------------------------------------


def test_duckdb_backend_builds_merges_and_publishes(tmp_path: Path) -> None:
    wh = DuckDBWarehouse(tmp_path / "warehouse.duckdb", schemas=SCHEMAS)
    first = _orders(range(1, 101))
    build = wh.begin_build("day1")
    assert wh.load_parquet(build, "raw", "orders", [_write(first, tmp_path / "a.parquet")]) == 100
    wh.publish(build)
    build = wh.begin_build("day2")
    result = wh.merge_parquet(
        build,
        "raw",
        "orders",
        [_write(_orders(range(90, 121), version=1), tmp_path / "b.parquet")],
        ["id"],
        cursor="updated_at",
    )
    assert (result.updated, result.inserted) == (11, 20)
    other = wh.begin_build("day2-rerun")
    wh.publish(build)
    with pytest.raises(PublishConflictError):
        wh.publish(other)
    wh.abandon_build(other)
    n = wh.read_arrow(
        "select count(*) as n from {raw}.orders where updated_at > ?",
        [dt.datetime(2026, 11, 2, tzinfo=dt.UTC)],
    )
    assert n.column("n")[0].as_py() == 31


def test_postgres_lease_one_holder_at_a_time(wh: PostgresWarehouse) -> None:
    from warehouse.lease import LeaseLostError

    lease = wh.lease_backend()
    assert lease.read() is None
    mine, ours = lease.try_acquire("nightly/a", "nightly 2026-11-18", 60)
    assert ours and mine.holder == "nightly/a"
    theirs, ours = lease.try_acquire("nightly/b", "nightly 2026-11-19", 60)
    assert not ours and theirs.token == mine.token
    again, ours = lease.try_acquire("nightly/a", "nightly 2026-11-18", 60)
    assert ours and again.token == mine.token  # a retry of the same run takes it again
    assert lease.renew("nightly/a", 60).expires_at >= mine.expires_at
    with pytest.raises(LeaseLostError):
        lease.renew("nightly/b", 60)
    # an expired lease is taken over
    lease.try_acquire("nightly/a", "nightly 2026-11-18", -1)
    taken, ours = lease.try_acquire("nightly/b", "nightly 2026-11-19", 60)
    assert ours and taken.holder == "nightly/b"
    assert not lease.release("nightly/a")
    assert lease.release("nightly/b") and lease.read() is None
    lease.try_acquire("nightly/c", "make backfill", 60)
    assert lease.force_release().holder == "nightly/c" and lease.read() is None


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_session_arrow_round_trip_and_open_build(kind: str, tmp_path: Path, pg_database: str):
    """A later task finds the run's build (`open_build`), appends Arrow rows in a
    transaction (`insert_arrow`) and reads them back as Arrow with `?` parameters, on
    both backends; a rolled-back transaction leaves nothing; another run has no build."""
    wh: Warehouse = (
        DuckDBWarehouse(tmp_path / "wh.duckdb")
        if kind == "duckdb"
        else PostgresWarehouse(pg_database)
    )
    started = wh.begin_build("run-a")
    build = wh.open_build("run-a")
    assert build is not None and build.token == started.token
    assert wh.open_build("run-b") is None
    rows = pa.table(
        {
            "day": pa.array([dt.date(2026, 11, 1), dt.date(2026, 11, 2)]),
            "region": ["EU", 'N"A, x'],
            "total": pa.array([Decimal("1.50"), None], type=pa.decimal128(18, 2)),
        }
    )
    with wh.transaction(build) as s:
        s.execute("create table {analytics}.t (day date, region text, total numeric(18,2))")
        assert s.insert_arrow(s.table("analytics", "t"), rows) == 2
    with pytest.raises(RuntimeError, match="boom"):
        with wh.transaction(build) as s:
            s.insert_arrow(s.table("analytics", "t"), rows)
            raise RuntimeError("boom")
    with wh.transaction(build) as s:
        got = s.read_arrow(
            "select * from {analytics}.t where day >= ? order by day", [rows["day"][0].as_py()]
        )
    assert got.to_pylist() == rows.to_pylist()
    got = wh.read_arrow("select region from {analytics}.t where total is null", build=build)
    assert got.column("region").to_pylist() == ['N"A, x']
