"""The readers on every warehouse backend: the report, `make query` and the landed ->
warehouse reconciliation give the same results on a DuckDB file and on PostgreSQL.

The same tables are published on both (through `begin_build` / `publish`); the report's
files must be byte for byte those the nightly's DuckDB path gives. On PostgreSQL the
text columns use an ICU en-US collation, as a server created with an en_US locale
would: ordering there differs from DuckDB's (`_hidden` and `<x>` before `EU`), so a
report that let SQL order its rows would differ.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from quality.reconcile import ReconciliationError, reconcile_run
from report.build import build_report, csv_text, rebuild_all_pages
from tests.warehouse.test_load import TZ, items, keys, land, orders, products, ts, users
from warehouse import query
from warehouse.backends.duckdb import DuckDBWarehouse
from warehouse.backends.postgres import PostgresWarehouse, libpq_url
from warehouse.load import SourceLoadPlan, load_source_db

DAY = dt.date(2026, 3, 7)
RUN = DAY.isoformat()
REGIONS = ["EU", "eu", "<script>x</script>", "_hidden", "$x^{$", "Zed", "ärea", "-west"]
CATEGORIES = ["books", "Games", "_misc", "toys"]


def _daily_sales() -> list[tuple]:
    rows = []
    for offset in (0, 1, 6, 7, 12, 40):  # the day, the day before, a week before, ...
        day = DAY - dt.timedelta(days=offset)
        for r, region in enumerate(REGIONS):
            for c, category in enumerate(CATEGORIES):
                if (r + c + offset) % 3 == 0:
                    continue
                cents = (r + 1) * 1000 + (c + 1) * 37 + offset * 11
                rows.append((day, region, category, Decimal(cents) / 100, r + c + 1))
    # two regions with the same total on the day: the tie is ordered by region
    rows.append((DAY, "tie-b", "books", Decimal("5.00"), 1))
    rows.append((DAY, "tie-a", "books", Decimal("5.00"), 1))
    return rows


def _sales_summary(daily: list[tuple]) -> list[tuple]:
    summed: dict[tuple, list] = {}
    for day, region, _, total, n in daily:
        acc = summed.setdefault((day, region), [Decimal(0), 0])
        acc[0] += total
        acc[1] += n
    return [(d, r, t, n) for (d, r), (t, n) in summed.items()]


def _publish(wh: Any, *, postgres: bool) -> None:
    """The same analytics, ops and raw tables published on either backend."""
    text = "varchar"
    if postgres:
        text = 'varchar collate "en-US-x-icu"'
    daily = _daily_sales()
    build = wh.begin_build("report-tables")
    with wh.transaction(build) as s:
        s.execute(
            f'create table {{analytics}}.daily_sales ("date" date, region {text}, '
            f"category {text}, total_sales_usd decimal(18,2), order_count bigint)"
        )
        s.execute(
            f'create table {{analytics}}.sales_summary ("date" date, region {text}, '
            "total_sales_usd decimal(18,2), order_count bigint)"
        )
        for row in daily:
            s.execute("insert into {analytics}.daily_sales values (?, ?, ?, ?, ?)", list(row))
        for row in _sales_summary(daily):
            s.execute("insert into {analytics}.sales_summary values (?, ?, ?, ?)", list(row))
        s.execute(
            f"create table {{ops}}.restated_days (run_id {text}, business_date date, reason {text})"
        )
        for run, day, reason in [
            (RUN, DAY - dt.timedelta(days=1), "late_order"),
            (RUN, DAY - dt.timedelta(days=1), "Fx_revised"),
            (RUN, DAY - dt.timedelta(days=1), "late_order"),
            (RUN, DAY - dt.timedelta(days=1), "_deleted"),
            ("2026-03-06", DAY - dt.timedelta(days=1), "late_order"),
            ("2026-03-08", DAY - dt.timedelta(days=1), "Status"),
            (RUN, DAY - dt.timedelta(days=7), "late_order"),
        ]:
            s.execute("insert into {ops}.restated_days values (?, ?, ?)", [run, day, reason])
        s.execute(f"create table {{ops}}.daily_sales_days (run_id {text}, business_date date)")
        s.execute(
            "insert into {ops}.daily_sales_days values (?, ?)", [RUN, DAY - dt.timedelta(days=6)]
        )
        s.execute(
            f"create table {{ops}}.quality_results (run_id {text}, severity {text}, "
            "success boolean)"
        )
        for severity, success in [("critical", True), ("warning", False), ("warning", True)]:
            s.execute(
                "insert into {ops}.quality_results values (?, ?, ?)", [RUN, severity, success]
            )
        s.execute(
            f"create table {{ops}}.task_metrics (run_id {text}, task {text}, status {text}, "
            "seconds double precision, started_at timestamptz)"
        )
        start = dt.datetime(2026, 3, 8, 3, 0, tzinfo=dt.UTC)
        for task, seconds, minutes in [
            ("load_source_db", 12.25, 1),
            ("extract_source_db", 30.5, 0),
            ("Extract_payments", 4.75, 0),  # the same start: ordered by task
            ("_publish", 0.05, 5),
        ]:
            s.execute(
                "insert into {ops}.task_metrics values (?, ?, 'success', ?, ?)",
                [RUN, task, seconds, start + dt.timedelta(minutes=minutes)],
            )
        s.execute("create table {raw}.orders (id bigint, updated_at timestamptz)")
        s.execute(
            "insert into {raw}.orders values (1, ?), (2, ?)",
            [
                dt.datetime(2026, 3, 8, 1, 2, 3, 456789, tzinfo=dt.UTC),
                dt.datetime(2026, 3, 7, 23, 0, tzinfo=dt.UTC),
            ],
        )
    wh.publish(build)


@pytest.fixture(params=["duckdb", "postgres"])
def empty(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An empty warehouse of each backend (a DuckDB file; a fresh PostgreSQL database)."""
    if request.param == "duckdb":
        return DuckDBWarehouse(tmp_path / "wh" / "warehouse.duckdb")
    return PostgresWarehouse(request.getfixturevalue("pg_database"))


@pytest.fixture
def backend(empty: Any) -> Any:
    _publish(empty, postgres=empty.kind == "postgres")
    return empty


@pytest.fixture
def duckdb_file(tmp_path: Path) -> Path:
    """The same published tables in a DuckDB file: what the nightly passes (a path)."""
    path = tmp_path / "reference" / "warehouse.duckdb"
    _publish(DuckDBWarehouse(path), postgres=False)
    return path


def _reports(where: Any, out: Path) -> dict[str, bytes]:
    stats = {"run_id": RUN, "generated_at": "2026-03-08T03:00:00+00:00", "extracted": {"a": 1}}
    for offset in (7, 6, 1):  # pages the day's run restates or recomputes
        day = DAY - dt.timedelta(days=offset)
        build_report(where, out, day, {"run_id": day.isoformat()})
    build_report(where, out, DAY, stats)  # rebuilds the three pages above
    build_report(where, out, DAY + dt.timedelta(days=1), {})  # nothing on that day
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_the_same_published_tables_give_the_same_report_files(
    backend: Any, duckdb_file: Path, tmp_path: Path
) -> None:
    expected = _reports(duckdb_file, tmp_path / "expected")
    got = _reports(backend, tmp_path / "got")
    assert sorted(got) == sorted(expected)
    assert len(got) == 5 * 4 + 1  # html, csv, png, json per day; the index
    for name in expected:
        assert got[name] == expected[name], name

    # what the files say: code-point order, ties by region, reasons sorted and distinct,
    # steps by start then task, freshness in UTC
    csv_rows = got[f"{RUN}.csv"].decode().splitlines()[1:]
    day_rows = sorted((r, c) for d, r, c, _, _ in _daily_sales() if d == DAY)
    assert [tuple(line.split(",")[1:3]) for line in csv_rows] == [
        (csv_text(r), csv_text(c)) for r, c in day_rows
    ]
    assert day_rows[0][0] == "$x^{$" and day_rows[-1][0] == "ärea"
    html = got[f"{RUN}.html"].decode()
    assert html.index("<td>tie-a</td>") < html.index("<td>tie-b</td>")
    previous = got[f"{DAY - dt.timedelta(days=1)}.html"].decode()
    assert f"by run {RUN}\n(Fx_revised, _deleted, late_order)" in previous
    assert previous.index("by run 2026-03-08") > previous.index(f"by run {RUN}")
    steps = ["Extract_payments", "extract_source_db", "load_source_db", "_publish"]
    positions = [html.index(f"<td>{task}</td>") for task in steps]
    assert positions == sorted(positions)
    assert "Newest source change: <strong>2026-03-08 01:02:03 UTC</strong>" in html
    assert "1 warning(s) in 3 checks" in html

    # a rollback's rebuild of every page, the same way
    rebuild_all_pages(duckdb_file, tmp_path / "expected")
    rebuild_all_pages(backend, tmp_path / "got")
    again = {p.name: p.read_bytes() for p in sorted((tmp_path / "got").iterdir())}
    assert again == {p.name: p.read_bytes() for p in sorted((tmp_path / "expected").iterdir())}
    assert f"{DAY + dt.timedelta(days=1)}.html" not in again  # after the last published day


# ---------------------------------------------------------------------------- make query

SQL = (
    "select region, sum(total_sales_usd) as sales_usd, sum(order_count) as orders, "
    "count(*) as days, max(date) as last_day "
    "from analytics.sales_summary where date between current_date - 100000 and ? "
    "and region not like 'tie-%' "
    "group by region order by sales_usd desc, orders"
)


def _shell(
    backend: Any, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys, stdin: str = ""
) -> tuple[int, str, str]:
    """`python -m warehouse.query` as `make query` runs it: the configured warehouse."""
    monkeypatch.delenv("DBT_TARGET", raising=False)
    if isinstance(backend, DuckDBWarehouse):
        monkeypatch.delenv("AIRFLOW_CONN_WAREHOUSE", raising=False)
        monkeypatch.setenv("WAREHOUSE_PATH", str(backend.path))
    else:
        monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", libpq_url(backend.url))
    if stdin:
        import io

        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    capsys.readouterr()
    code = query.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_query_returns_the_same_rows_and_table(
    backend: Any, duckdb_file: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    sql = SQL.replace("?", f"date '{DAY}'")
    names, rows = query.query_rows(backend, sql)
    assert (names, rows) == query.query_rows(duckdb_file, sql)
    assert names == ["region", "sales_usd", "orders", "days", "last_day"]
    assert len(rows) == len(REGIONS) and all(r[4] == DAY for r in rows)

    code, out, err = _shell(backend, ["--sql", sql], monkeypatch, capsys)
    assert code == 0, err
    monkeypatch.setenv("WAREHOUSE_PATH", str(duckdb_file))
    expected = _shell(DuckDBWarehouse(duckdb_file), ["--sql", sql], monkeypatch, capsys)[1]
    assert out == expected
    assert out.rstrip().endswith(f"{len(rows)} rows")
    assert "│ <script>x</script> │" in out


def test_query_cannot_write(backend: Any, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    code, _, err = _shell(
        backend, ["--sql", "drop table analytics.sales_summary"], monkeypatch, capsys
    )
    assert code == 1 and "read-only" in err
    # several statements in one string cannot sneak a commit in
    code, _, err = _shell(
        backend,
        ["--sql", "delete from analytics.sales_summary; commit"],
        monkeypatch,
        capsys,
    )
    assert code == 1 and err.startswith("error:")
    # turning read-only off lasts one statement: the next one runs read-only again
    undo = (
        "set default_transaction_read_only = off;"
        if not isinstance(backend, DuckDBWarehouse)
        else "set TimeZone = 'UTC';"
    )
    code, out, _ = _shell(
        backend, [], monkeypatch, capsys, stdin=f"{undo}\ndelete from analytics.daily_sales;\n"
    )
    assert code == 0 and "error:" in out and "read-only" in out
    names, rows = query.query_rows(backend, "select count(*) from analytics.daily_sales")
    assert rows == [(len(_daily_sales()),)]


# --------------------------------------------------------- landed -> warehouse reconcile


@pytest.fixture
def loaded(empty: Any, tmp_path: Path) -> Any:
    """A landed run loaded into each backend: (warehouse, build or None, landing)."""
    backend = empty
    landing = tmp_path / "landing"
    extra = {"window_end": ts(20).isoformat()}
    land(landing, "source_db", "users", "r1", users([(1, "EU", ts(1)), (2, "US", ts(1))]), **extra)
    priced = products([(10, "books", ts(1)), (11, "toys", ts(1))]).append_column(
        "price", pa.array([Decimal("9.99"), Decimal("5.00")], pa.decimal128(12, 2))
    )
    land(landing, "source_db", "products", "r1", priced, **extra)
    placed = [
        (100, 1, "paid", "10.00", ts(5), ts(5)),
        (101, 2, "paid", "20.00", ts(6), ts(6)),
        (102, 2, "paid", "30.00", ts(6, 3), ts(7)),  # 22:00 on the 5th in New York
        (103, 1, "paid", "40.00", ts(8), ts(8)),
    ]
    land(landing, "source_db", "orders", "r1", orders(placed), **extra)
    lines = items([(1000 + n, 100 + n % 4, 10 + n % 2, ts(5)) for n in range(10)])
    land(landing, "source_db", "order_items", "r1", lines, reconcile_deletes=True, **extra)
    land(
        landing,
        "source_db",
        "order_items__keys",
        "r1",
        keys(list(range(1000, 1010))),
        mode="key_set",
    )
    if isinstance(backend, DuckDBWarehouse):
        load_source_db(
            landing, SourceLoadPlan("r1", TZ, warehouse_path=backend.path)
        )  # the nightly's path API
        build = None
    else:
        build = backend.begin_build("r1")
        load_source_db(landing, SourceLoadPlan("r1", TZ, warehouse=backend, build=build))
    return backend, build, landing


def test_reconcile_passes_for_a_matching_load(loaded: Any) -> None:
    wh, build, landing = loaded
    with wh.transaction(build) as s:
        checked = reconcile_run(s, landing, "source_db", "r1", TZ)
    assert checked == {"users": 2, "products": 2, "orders": 4, "order_items": 10}
    if build is None:  # a bare DuckDB connection (read-only, as the nightly opens it)
        con = duckdb.connect(str(wh.path), read_only=True)
        try:
            assert reconcile_run(con, landing, "source_db", "r1", TZ) == checked
        finally:
            con.close()


def test_reconcile_fails_naming_table_and_day(loaded: Any) -> None:
    wh, build, landing = loaded
    with wh.transaction(build) as s:
        s.execute("update {raw}.orders set total = total + 1 where id = 101")
        s.execute("delete from {raw}.orders where id = 102")
        s.execute("update {raw}.order_items set updated_at = ? where id = 1003", [ts(9)])
    with wh.transaction(build) as s, pytest.raises(ReconciliationError) as err:
        reconcile_run(s, landing, "source_db", "r1", TZ)
    lines = str(err.value).splitlines()
    assert lines == [
        "run r1: landed rows and the warehouse disagree:",
        "  source_db.orders business day 2024-01-05: landed 2 rows / 40.00 "
        "vs warehouse 1 rows / 10.00",
        "  source_db.orders business day 2024-01-06: landed 1 rows / 20.00 "
        "vs warehouse 1 rows / 21.00",
        "  source_db.order_items all rows: landed 10 rows / 10.00 vs warehouse 9 rows / 9.00",
    ]


def test_pg_collation_is_in_use(backend: Any) -> None:
    """The PostgreSQL tables really sort another way than code points (else the report
    test above could not catch SQL ordering)."""
    rows = query.query_rows(backend, "select distinct region from analytics.daily_sales order by 1")
    regions = [r[0] for r in rows[1]]
    if isinstance(backend, DuckDBWarehouse):
        assert regions == sorted(regions)
    else:
        assert regions != sorted(regions)
