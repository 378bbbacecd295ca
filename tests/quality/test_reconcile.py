"""Reconciliation gates: source vs landed rows (same snapshot), landed rows vs their merged
copies, per business day."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from demo.generator import generate
from extract.db_extract import ExtractPlan, ShardReadPolicy, extract_tables
from extract.landing import LandingTarget, write_landing_table
from extract.tables import TableConfig
from extract.watermark import record_loaded
from quality.reconcile import (
    SOURCE_CHECKS,
    ReconciliationError,
    SourceTotals,
    check_source_totals,
    clear_source_totals,
    raise_for_source_mismatch,
    reconcile_run,
    write_source_totals,
)
from tests.sqlite_shards import split_sqlite_source

NY = "America/New_York"

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("user_id", pa.int64()),
        ("status", pa.string()),
        ("currency", pa.string()),
        ("total", pa.decimal128(12, 2)),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _setup(tmp_path: Path, unversioned: bool = False) -> duckdb.DuckDBPyConnection:
    """Three landed orders merged into raw (plus an older one); `unversioned`: a fourth
    landed and merged with no updated_at."""
    ts = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)  # 2026-11-19 in New York
    late = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    rows = {
        "id": [1, 2, 3],
        "user_id": [1, 1, 2],
        "status": ["paid", "paid", "cancelled"],
        "currency": ["USD", "EUR", "USD"],
        "total": [Decimal("10.00"), Decimal("2.50"), Decimal("7.25")],
        "created_at": [ts, late, late],
        "updated_at": [late, late, late],
    }
    if unversioned:
        for column, value in zip(
            rows, [4, 2, "paid", "USD", Decimal("1.25"), late, None], strict=True
        ):
            rows[column].append(value)
    write_landing_table(
        pa.table(rows, schema=SCHEMA),
        schema=SCHEMA,
        target=LandingTarget(
            landing_root=tmp_path / "landing",
            source="source_db",
            table_name="orders",
            run_id="2026-11-20",
        ),
    )
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("create schema raw")
    con.execute(
        "create table raw.orders as select * from read_parquet(?, hive_partitioning = false)",
        [str(tmp_path / "landing/source_db/orders/run=2026-11-20/*.parquet")],
    )
    con.execute("insert into raw.orders values (9, 1, 'paid', 'USD', 1.00, now(), now())")
    return con


def test_merged_rows_reconcile(tmp_path: Path) -> None:
    con = _setup(tmp_path)
    checked = reconcile_run(
        con, tmp_path / "landing", "source_db", "2026-11-20", "America/New_York"
    )
    assert checked == {"orders": 3}


def test_a_row_without_updated_at_matches_only_its_unversioned_copy(tmp_path: Path) -> None:
    """The version match is NULL-safe: a landed row with no updated_at is its raw copy
    with none, not a copy that has one."""
    con = _setup(tmp_path, unversioned=True)
    checked = reconcile_run(con, tmp_path / "landing", "source_db", "2026-11-20", NY)
    assert checked == {"orders": 4}
    con.execute("update raw.orders set updated_at = created_at where id = 4")
    with pytest.raises(
        ReconciliationError, match=r"2026-11-20: landed 3 rows / 11.00 vs warehouse 2 rows / 9.75"
    ):
        reconcile_run(con, tmp_path / "landing", "source_db", "2026-11-20", NY)


def test_a_changed_amount_fails_naming_table_day_and_numbers(tmp_path: Path) -> None:
    con = _setup(tmp_path)
    con.execute("update raw.orders set total = 11.00 where id = 1")
    with pytest.raises(ReconciliationError) as err:
        reconcile_run(con, tmp_path / "landing", "source_db", "2026-11-20", "America/New_York")
    message = str(err.value)
    assert "source_db.orders business day 2026-11-19" in message
    assert "landed 1 rows / 10.00 vs warehouse 1 rows / 11.00" in message


def test_a_lost_row_fails(tmp_path: Path) -> None:
    con = _setup(tmp_path)
    con.execute("delete from raw.orders where id = 3")
    with pytest.raises(
        ReconciliationError, match=r"2026-11-20: landed 2 rows / 9.75 vs warehouse 1 rows / 2.50"
    ):
        reconcile_run(con, tmp_path / "landing", "source_db", "2026-11-20", "America/New_York")


# ------------------------------------------- source -> landing, on real PostgreSQL


def _extract_with_totals(url: str, landing: Path, run_id: str, tz: str) -> Path:
    totals = SourceTotals(tz)
    clear_source_totals(landing, run_id)
    extract_tables(
        url,
        ExtractPlan(run_id=run_id, landing_root=landing, warehouse_path=None, aggregates=totals),
    )
    return write_source_totals(landing, run_id, totals)


@pytest.fixture
def pg_source(pg_database: str) -> str:
    generate(pg_database, seed=5, days=3, end_date=date(2026, 11, 20), orders_per_day=30)
    return pg_database


def test_source_totals_match_the_landed_rows(pg_source: str, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    record = json.loads(_extract_with_totals(pg_source, landing, "2026-11-20", NY).read_text())
    assert record["unchecked"] == {}
    assert set(record["tables"]) == {"orders", "order_items", "products", "users"}
    # the source side really is per business day, from the source's own SQL
    engine = sa.create_engine(pg_source)
    with engine.connect() as conn:
        expected = conn.execute(
            sa.text(
                "select cast(timezone(:tz, created_at) as date), count(*), sum(total) "
                "from orders group by 1 order by 1"
            ),
            {"tz": NY},
        ).fetchall()
    engine.dispose()
    assert [(e["day"], e["rows"], Decimal(e["money"])) for e in record["tables"]["orders"]] == [
        (d.isoformat(), n, m) for d, n, m in expected
    ]
    result = check_source_totals(landing, "2026-11-20")
    assert result.success, [o.describe() for o in result.outcomes]
    assert {o.table for o in result.outcomes} == {
        "source_db.orders",
        "source_db.order_items",
        "source_db.products",
        "source_db.users",
    }
    raise_for_source_mismatch(result)  # no error


def test_source_changed_after_the_extract_still_reconciles(pg_source: str, tmp_path: Path) -> None:
    # The totals come from the extract's snapshot, not from a later look at the source.
    landing = tmp_path / "landing"
    _extract_with_totals(pg_source, landing, "2026-11-20", NY)
    engine = sa.create_engine(pg_source)
    with engine.begin() as conn:
        conn.execute(sa.text("update orders set total = total + 1"))
        conn.execute(
            sa.text("delete from order_items where id in (select min(id) from order_items)")
        )
    engine.dispose()
    assert check_source_totals(landing, "2026-11-20").success


def test_a_tampered_landed_file_fails_naming_table_day_and_both_numbers(
    pg_source: str, tmp_path: Path
) -> None:
    landing = tmp_path / "landing"
    _extract_with_totals(pg_source, landing, "2026-11-20", NY)
    [part] = (landing / "source_db/orders/run=2026-11-20").glob("*.parquet")
    table = pq.read_table(part)
    first = table.slice(0, 1).to_pylist()[0]
    day = first["created_at"].astimezone(ZoneInfo(NY)).date().isoformat()
    totals = table.column("total").to_pylist()
    totals[0] = totals[0] + Decimal("0.01")
    pq.write_table(
        table.set_column(
            table.schema.get_field_index("total"),
            "total",
            pa.array(totals, table.schema.field("total").type),
        ),
        part,
    )

    result = check_source_totals(landing, "2026-11-20")
    assert not result.success
    [failed] = [o for o in result.outcomes if not o.success]
    assert failed.table == "source_db.orders" and failed.severity == "critical"
    assert [s["day"] for s in failed.samples] == [day]
    sample = failed.samples[0]
    assert Decimal(sample["landing_money"]) - Decimal(sample["source_money"]) == Decimal("0.01")
    assert sample["source_rows"] == sample["landing_rows"]
    with pytest.raises(ReconciliationError) as err:
        raise_for_source_mismatch(result)
    assert (
        f"source_db.orders business day {day}: source {sample['source_rows']} rows / "
        f"{sample['source_money']} vs landing {sample['landing_rows']} rows / "
        f"{sample['landing_money']}"
    ) in str(err.value)


def test_a_missing_landed_row_fails(pg_source: str, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    _extract_with_totals(pg_source, landing, "2026-11-20", NY)
    [part] = (landing / "source_db/order_items/run=2026-11-20").glob("*.parquet")
    table = pq.read_table(part)
    pq.write_table(table.slice(1), part)
    result = check_source_totals(landing, "2026-11-20")
    [failed] = [o for o in result.outcomes if not o.success]
    assert failed.table == "source_db.order_items"
    assert [s["source_rows"] - s["landing_rows"] for s in failed.samples] == [1]


def test_no_record_means_no_source_check(tmp_path: Path) -> None:
    assert check_source_totals(tmp_path / "landing", "2026-11-20") is None


def test_parallel_key_ranges_keep_working_with_the_hook(
    pg_source: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The hook wraps the ranged reader (it does not replace it): ranges still run in the
    # exported snapshot, and the totals still equal what landed.
    landing = tmp_path / "landing"
    totals = SourceTotals(NY)
    with caplog.at_level(logging.INFO, logger="extract.db_extract"):
        extract_tables(
            pg_source,
            ExtractPlan(
                run_id="r1",
                landing_root=landing,
                warehouse_path=None,
                aggregates=totals,
                parallelism=2,
                parallel_min_rows=1,
            ),
        )
    write_source_totals(landing, "r1", totals)
    assert "key ranges of id at once" in caplog.text
    assert check_source_totals(landing, "r1").success


# ------------------------------- source -> landing, on SQLite and MariaDB (no SQL zones)

DST_END = date(2026, 11, 1)  # New York falls back: 25 hours, 01:00-02:00 twice
# (created_at as stored, total): instants at the edges of New York's days around DST_END
EDGE_ORDERS = [
    ("2026-11-01 03:59:59.999600", "0.10"),  # Oct 31 23:59:59.9996 EDT (SQLite's date
    # functions would round it to 04:00:00.000 UTC, i.e. Nov 1)
    ("2026-11-01 04:00:00", "0.20"),  # Nov 1 00:00 EDT
    ("2026-11-01 05:30:00", "0.40"),  # 01:30 EDT
    ("2026-11-01 06:30:00", "0.80"),  # 01:30 EST: the same wall clock, an hour later
    ("2026-11-02 04:59:59.999999", "1.60"),  # Nov 1 23:59:59.999999 EST
    ("2026-11-02 05:00:00", "3.20"),  # Nov 2 00:00 EST
]
# SQLite holds whatever ISO text the application wrote: offsets and Z as well
SQLITE_EDGE_ORDERS = [
    ("2026-11-02T06:59:59.999999+02:00", "6.40"),  # 04:59:59.999999 UTC: Nov 1
    ("2026-11-02T05:00:00Z", "12.80"),  # Nov 2
]


@pytest.fixture(params=["sqlite", "mariadb"])
def zoneless_source(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A demo source across New York's DST change plus orders on the day boundaries."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'source.db'}"
    else:
        url = request.getfixturevalue("mariadb_database")
    generate(url, seed=7, days=3, end_date=DST_END + timedelta(days=1), orders_per_day=20)
    edges = EDGE_ORDERS + (SQLITE_EDGE_ORDERS if request.param == "sqlite" else [])
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        first = conn.execute(sa.text("select max(id) + 1 from orders")).scalar()
        for k, (created, total) in enumerate(edges):
            conn.execute(
                sa.text(
                    "insert into orders (id, user_id, status, currency, total, created_at, "
                    "updated_at) values (:id, 1, 'paid', 'USD', :total, :created, :created)"
                ),
                {"id": first + k, "total": total, "created": created},
            )
    engine.dispose()
    return url


def _ny_day(value: object) -> str:
    """Business day of a stored timestamp, read in plain Python (no SQL, no DuckDB)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(ZoneInfo(NY)).date().isoformat()


def _expected_orders(url: str) -> list[tuple[str, int, Decimal]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select created_at, total from orders")).fetchall()
    engine.dispose()
    days: dict[str, list] = {}
    for created, total in rows:
        entry = days.setdefault(_ny_day(created), [0, Decimal(0)])
        entry[0] += 1
        entry[1] += Decimal(str(total))  # SQLite hands back floats: their shortest text
    return sorted((d, n, m) for d, (n, m) in days.items())


def _edit_landed(landing: Path, table: str, run_id: str, edit) -> None:
    [part] = (landing / f"source_db/{table}/run={run_id}").glob("*.parquet")
    data = pq.read_table(part).to_pylist()
    schema = pq.read_schema(part)
    pq.write_table(pa.Table.from_pylist(edit(data), schema=schema), part)


def test_zoneless_sources_total_per_new_york_day_and_a_tampered_file_fails(
    zoneless_source: str, tmp_path: Path
) -> None:
    landing = tmp_path / "landing"
    record = json.loads(_extract_with_totals(zoneless_source, landing, "r1", NY).read_text())
    assert record["unchecked"] == {}
    assert set(record["tables"]) == set(SOURCE_CHECKS)
    expected = _expected_orders(zoneless_source)
    got = [(e["day"], e["rows"], Decimal(e["money"])) for e in record["tables"]["orders"]]
    assert got == expected
    assert {"2026-10-31", "2026-11-01", "2026-11-02"} <= {d for d, _, _ in got}
    result = check_source_totals(landing, "r1")
    assert result.success, [o.describe() for o in result.outcomes]
    assert len(result.outcomes) == 4

    # after the extract: one order's amount changes, another order disappears
    by_day = {d: (n, m) for d, n, m in expected}
    changed = datetime(2026, 11, 2, 4, 59, 59, 999999, tzinfo=UTC)  # Nov 1, 23:59:59 EST
    dropped = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)  # Nov 2, 00:00 EST

    gone: list[dict] = []

    def tamper(rows: list[dict]) -> list[dict]:
        next(r for r in rows if r["created_at"] == changed)["total"] += Decimal("0.01")
        gone.extend(r for r in rows if r["created_at"] == dropped)
        return [r for r in rows if r["created_at"] != dropped]

    _edit_landed(landing, "orders", "r1", tamper)
    result = check_source_totals(landing, "r1")
    [failed] = [o for o in result.outcomes if not o.success]
    assert failed.table == "source_db.orders" and failed.severity == "critical"
    assert [s["day"] for s in failed.samples] == ["2026-11-01", "2026-11-02"]
    n1, m1 = by_day["2026-11-01"]
    n2, m2 = by_day["2026-11-02"]
    dropped_total = sum(r["total"] for r in gone)
    with pytest.raises(ReconciliationError) as err:
        raise_for_source_mismatch(result)
    message = str(err.value)
    assert (
        f"source_db.orders business day 2026-11-01: source {n1} rows / {m1:.2f} "
        f"vs landing {n1} rows / {m1 + Decimal('0.01'):.2f}"
    ) in message
    assert (
        f"source_db.orders business day 2026-11-02: source {n2} rows / {m2:.2f} "
        f"vs landing {n2 - len(gone)} rows / "
        f"{m2 - dropped_total:.2f}"
    ) in message


def test_sqlite_window_cut_inside_a_minute_totals_exactly_the_rows_read(tmp_path: Path) -> None:
    # SQLite's SQL window is a superset (day prefixes); the totals are cut at the exact
    # bounds: W - overlap inside a minute, and U (rows "from the future" are not read).
    url = f"sqlite:///{tmp_path / 'source.db'}"
    generate(url, seed=7, days=2, end_date=DST_END, orders_per_day=20)
    lo = datetime(2026, 11, 1, 12, 0, 30, 500000, tzinfo=UTC)
    future = (datetime.now(UTC) + timedelta(hours=1)).replace(tzinfo=None)
    cursors = {
        "2026-11-01 12:00:30.500000": "1.00",  # == lo: not read
        "2026-11-01 12:00:30.500001": "2.00",  # read
        "2026-11-01T14:00:30.4+02:00": "4.00",  # 12:00:30.4 UTC: not read
        "2026-11-01T12:00:59Z": "8.00",  # read
        "2026-11-01 11:59:59.999999": "16.00",  # not read
        future.isoformat(" "): "32.00",  # after U: not read
    }
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        first = conn.execute(sa.text("select max(id) + 1 from orders")).scalar()
        for k, (updated, total) in enumerate(cursors.items()):
            conn.execute(
                sa.text(
                    "insert into orders (id, user_id, status, currency, total, created_at, "
                    "updated_at) values (:id, 1, 'paid', 'USD', :total, :created, :updated)"
                ),
                {"id": first + k, "total": total, "created": "2026-10-01 03:59:59.9996",
                 "updated": updated},
            )  # fmt: skip
    engine.dispose()
    warehouse = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(warehouse))
    end = (lo + TableConfig("orders").overlap).isoformat()
    record_loaded(
        con,
        source="source_db",
        table="orders",
        run_id="r0",
        manifest={"mode": "incremental", "window_end": end, "rows": 0},
    )
    con.close()
    landing = tmp_path / "landing"
    totals = SourceTotals(NY)
    manifests = extract_tables(
        url,
        ExtractPlan(
            run_id="r1",
            landing_root=landing,
            warehouse_path=warehouse,
            configs=[TableConfig("orders")],
            aggregates=totals,
        ),
    )
    assert manifests["orders"]["window_start"] == lo.isoformat()
    write_source_totals(landing, "r1", totals)
    landed = pq.read_table(landing / "source_db/orders/run=r1")
    assert first + 1 in landed.column("id").to_pylist()
    assert len(landed) == manifests["orders"]["rows"]
    # the edge orders were created on Sep 30 in New York: only the two read are counted
    sep30 = {d: (n, m) for d, n, m in ((e["day"], e["rows"], e["money"]) for e in
             totals.record("r1")["tables"]["orders"])}["2026-09-30"]  # fmt: skip
    assert sep30 == (2, "10.00")
    assert sum(e["rows"] for e in totals.record("r1")["tables"]["orders"]) == len(landed)
    assert check_source_totals(landing, "r1").success


def test_sharded_sqlite_source_every_shard_adds_to_the_totals(tmp_path: Path) -> None:
    from extract.db_extract import extract_sharded_source
    from warehouse.load import SourceLoadPlan, load_source_db_sharded

    a, b, shard_map = split_sqlite_source(
        tmp_path, seed=9, days=3, end_date=DST_END + timedelta(days=1), orders_per_day=20
    )
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"

    def run(run_id: str) -> dict:
        totals = SourceTotals(NY)
        rows = extract_sharded_source(shard_map, ExtractPlan(run_id=run_id, landing_root=landing, warehouse_path=warehouse, aggregates=totals), ShardReadPolicy(max_workers=2))["rows"]  # fmt: skip
        record = json.loads(write_source_totals(landing, run_id, totals).read_text())
        assert {t: sum(e["rows"] for e in record["tables"][t]) for t in SOURCE_CHECKS} == {
            t: rows[t] for t in SOURCE_CHECKS
        }
        assert check_source_totals(landing, run_id).success
        load_source_db_sharded(landing, SourceLoadPlan(run_id, NY, warehouse_path=warehouse))
        return record

    first = run("r1")
    assert first["unchecked"] == {}
    for url, key in ((a, 1), (b, 64)):  # an incremental run: each shard's own window
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                sa.text("update orders set total = total + 1, updated_at = :t where id = :id"),
                {"t": datetime.now(UTC).replace(tzinfo=None).isoformat(" "), "id": key},
            )
        engine.dispose()
    second = run("r2")
    read = sum(e["rows"] for e in second["tables"]["orders"])
    assert 2 <= read < sum(e["rows"] for e in first["tables"]["orders"])  # the window only


def _racing_reader(path: Path):
    """A reader that, as the orders are about to be read, commits one more order from
    another connection."""
    from extract.db_extract import read_batches

    def racing(conn, request):
        if request.table.name == "orders":
            other = sqlite3.connect(path, timeout=1)
            with other:
                other.execute(
                    "insert into orders select max(id) + 1, 1, 'paid', 'USD', 9.99, "
                    "'2026-11-01 12:00:00', '2026-11-01 12:00:00' from orders"
                )
            other.close()
        yield from read_batches(conn, request)

    return racing


def test_sqlite_extract_reads_one_snapshot_so_a_concurrent_commit_is_no_alarm(
    tmp_path: Path,
) -> None:
    """The SQLite extract runs in a real transaction (explicit BEGIN): an order committed
    by another connection while the run reads (WAL mode, so the writer is not blocked) is
    in neither the totals nor the landed rows, and every table is checked."""
    path = tmp_path / "source.db"
    url = f"sqlite:///{path}"
    generate(url, seed=7, days=1, end_date=DST_END, orders_per_day=10)
    with sqlite3.connect(path) as db:
        assert db.execute("pragma journal_mode=wal").fetchone() == ("wal",)
        before = db.execute("select count(*) from orders").fetchone()[0]
    landing = tmp_path / "landing"
    totals = SourceTotals(NY)
    manifests = extract_tables(
        url,
        ExtractPlan(
            run_id="r1",
            landing_root=landing,
            warehouse_path=None,
            reader=_racing_reader(path),
            aggregates=totals,
        ),
    )
    with sqlite3.connect(path) as db:
        assert db.execute("select count(*) from orders").fetchone()[0] == before + 1
    assert manifests["orders"]["rows"] == before
    record = json.loads(write_source_totals(landing, "r1", totals).read_text())
    assert record["unchecked"] == {}
    result = check_source_totals(landing, "r1")
    assert result.success and len(result.outcomes) == 4


def test_a_read_outside_a_transaction_is_recorded_unchecked_not_failed(tmp_path: Path) -> None:
    """The hook on a SQLite connection with no transaction (pysqlite's default: SELECTs
    in autocommit): a commit between its totals and the read is seen by PRAGMA
    data_version and the table is recorded as not checked instead of a false mismatch."""
    from extract.db_extract import ReadRequest, arrow_type

    path = tmp_path / "source.db"
    url = f"sqlite:///{path}"
    generate(url, seed=7, days=1, end_date=DST_END, orders_per_day=10)
    totals = SourceTotals(NY)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            table = sa.Table("orders", sa.MetaData(), autoload_with=conn)
            arrow = pa.schema([pa.field(c.name, arrow_type(c.type)) for c in table.columns])
            read = totals(_racing_reader(path))
            request = ReadRequest(table, arrow, None, {}, 1000)
            rows = sum(b.num_rows for b in read(conn, request))
    finally:
        engine.dispose()
    assert rows == 11  # the read saw the racing commit; the totals did not
    assert "changed" in totals.unchecked["orders"]
