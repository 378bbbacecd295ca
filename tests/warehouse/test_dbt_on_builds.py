"""The nightly's dbt build on a run's warehouse build, DuckDB and PostgreSQL alike.

The same raw Parquet is loaded into a DuckDB build (a copy of the file) and into a
PostgreSQL build (schemas `<schema>__build_<token>`), dbt builds each, then each build
is published. On PostgreSQL dbt must read and write only the build's schemas (through
DBT_NIGHTSHIFT_SCHEMA_SUFFIX): the published schemas do not change before the publish,
and no build schema is left after it. A second night changes the raw tables the same way
in a new build of each, dbt runs incrementally (var run_id), and both publish the same
marts again.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from tests.warehouse.test_dbt_postgres_parity import MARTS, OPS_SQL, RAW_TABLES, _rows
from tests.warehouse.test_dbt_project import CHANGES_R2, EXPECTED_NEW_YORK, RAW_SQL
from warehouse.backends.base import PUBLISHED_SCHEMAS, Build, Warehouse, WarehouseError
from warehouse.backends.duckdb import DuckDBWarehouse
from warehouse.backends.postgres import PostgresWarehouse
from warehouse.dbt_runner import (
    SCHEMA_SUFFIX_ENV,
    BuildPlan,
    DbtError,
    DbtResult,
    build_schema_suffix,
    dbt_build,
    dbt_target,
    postgres_env,
)

REPORT_TZ = "America/New_York"
SUMMARY_SQL = (
    "select date, region, total_sales_usd, order_count "
    "from {analytics}.sales_summary order by date, region"
)
# Never checked by the server here (the test server trusts local users): it only has to
# reach dbt through the environment and nowhere else.
PASSWORD = "pw-only-in-the-env"


@pytest.fixture
def raw_parquet(tmp_path: Path) -> dict[str, Path]:
    """`schema.table` → a Parquet file of the raw tables test_dbt_project builds."""
    duck = tmp_path / "raw-source.duckdb"
    out = tmp_path / "parquet"
    out.mkdir()
    files = {}
    con = duckdb.connect(str(duck))
    try:
        con.execute(RAW_SQL + OPS_SQL)
        for table in RAW_TABLES:
            files[table] = out / f"{table}.parquet"
            con.execute(f"copy {table} to '{files[table]}' (format parquet)")
    finally:
        con.close()
    return files


def _load(wh: Warehouse, build: Build, files: dict[str, Path]) -> None:
    for name, path in files.items():
        schema, table = name.split(".")
        wh.load_parquet(build, schema, table, [path])


def _change(wh: Warehouse, build: Build) -> None:
    """Run r2's changes (test_dbt_project.CHANGES_R2) on the build's raw and ops tables
    (`create table if not exists`: ops.deleted_rows, which a loader creates, is new)."""
    for statement in CHANGES_R2.split(";"):
        statement = statement.strip()
        if not statement or statement.upper().startswith(("SET", "CREATE SCHEMA")):
            continue  # the build has its schemas
        wh.execute(statement.replace("raw.", "{raw}.").replace("ops.", "{ops}."), build=build)


def _summary(wh: Warehouse, build: Build | None = None) -> list[tuple]:
    return [tuple(r.values()) for r in wh.read_arrow(SUMMARY_SQL, build=build).to_pylist()]


def _marts(wh: Warehouse) -> dict[str, list[tuple]]:
    out = {}
    for mart in MARTS:
        schema, table = mart.split(".")
        rows = wh.read_arrow(f"select * from {{{schema}}}.{table}").to_pylist()
        out[mart] = _rows([tuple(r.values()) for r in rows])
    return out


def _assert_same_published(duck: Warehouse, pg: Warehouse) -> None:
    in_duckdb, in_postgres = _marts(duck), _marts(pg)
    for mart in MARTS:
        assert in_duckdb[mart], f"{mart} is empty: the comparison would be vacuous"
        assert in_postgres[mart] == in_duckdb[mart], f"{mart} differs between PostgreSQL and DuckDB"
    assert _summary(pg) == _summary(duck)


def _schemas(engine: sa.Engine) -> set[str]:
    with engine.connect() as con:
        return {r[0] for r in con.exec_driver_sql("select nspname from pg_namespace")}


def _published_tables(engine: sa.Engine) -> dict[str, int]:
    """Row count of every table and view in the published schemas."""
    with engine.connect() as con:
        names = [
            f'"{s}"."{t}"'
            for s, t in con.exec_driver_sql(
                "select table_schema, table_name from information_schema.tables "
                "where table_schema = any(%(s)s)",
                {"s": list(PUBLISHED_SCHEMAS)},
            )
        ]
        return {n: con.exec_driver_sql(f"select count(*) from {n}").scalar_one() for n in names}


def _night(
    wh: Warehouse, run_id: str, target_dir: Path, *, files: dict[str, Path] | None = None
) -> tuple[Build, DbtResult]:
    build = wh.begin_build(run_id)
    if files is not None:
        _load(wh, build, files)
    else:
        _change(wh, build)
    plan = BuildPlan(REPORT_TZ, run_id=run_id, unit_tests=False, target_dir=target_dir)
    result = dbt_build(wh, plan, build=build)
    assert result.nodes and not result.failed
    return build, result


def test_dbt_builds_into_builds_on_duckdb_and_postgres(
    pg_database: str,
    tmp_path: Path,
    raw_parquet: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.delenv("DBT_POSTGRES_THREADS", raising=False)
    monkeypatch.setenv(SCHEMA_SUFFIX_ENV, "_stray")  # the build's suffix wins over it
    url = sa.make_url(pg_database).set(password=PASSWORD)
    engine = sa.create_engine(url)
    duck = DuckDBWarehouse(tmp_path / "warehouse.duckdb")
    pg = PostgresWarehouse(url.render_as_string(hide_password=False))
    try:
        # night 1: a full build from the raw data
        duck_build, _ = _night(duck, "r1", tmp_path / "dbt-duckdb", files=raw_parquet)
        pg_build, on_pg = _night(pg, "r1", tmp_path / "dbt-postgres", files=raw_parquet)
        assert on_pg.summary()["models"]["sales_summary"]["rows_affected"] == len(EXPECTED_NEW_YORK)
        assert _summary(pg, pg_build) == EXPECTED_NEW_YORK
        assert _summary(duck, duck_build) == EXPECTED_NEW_YORK
        # dbt wrote the build's schemas only: nothing is published yet
        assert _published_tables(engine) == {}
        assert not {s for s in _schemas(engine) if s.endswith("_stray")}
        duck.publish(duck_build)
        pg.publish(pg_build)
        assert not [s for s in _schemas(engine) if "__build_" in s]
        _assert_same_published(duck, pg)
        assert _summary(pg) == EXPECTED_NEW_YORK

        # contract types on PostgreSQL
        with engine.connect() as con:
            columns = {
                r[0]: r[1:]
                for r in con.exec_driver_sql(
                    "select column_name, data_type, character_maximum_length, "
                    "numeric_precision, numeric_scale "
                    "from information_schema.columns "
                    "where table_schema = 'analytics' and table_name = 'sales_summary'"
                )
            }
        # the contract's varchar is PostgreSQL's unbounded varchar (text's twin)
        assert columns == {
            "date": ("date", None, None, None),
            "region": ("character varying", None, None, None),
            "total_sales_usd": ("numeric", None, 18, 2),
            "order_count": ("bigint", None, 64, 0),
        }

        # night 2: r2's changes in new builds, fct_orders incremental (var run_id)
        published_before = _published_tables(engine)
        duck_build, _ = _night(duck, "r2", tmp_path / "dbt-duckdb")
        pg_build, _ = _night(pg, "r2", tmp_path / "dbt-postgres")
        assert _summary(pg, pg_build) == _summary(duck, duck_build) != EXPECTED_NEW_YORK
        # before the publish the published schemas still hold night 1, row for row
        assert _published_tables(engine) == published_before
        assert _summary(pg) == EXPECTED_NEW_YORK
        duck.publish(duck_build)
        pg.publish(pg_build)
        assert not [s for s in _schemas(engine) if "__build_" in s]
        _assert_same_published(duck, pg)
        moved = pg.read_arrow("select business_date from {marts}.fct_orders where order_id = 3")
        assert str(moved.column(0)[0]) == "2024-01-16"  # the restated move was published
    finally:
        engine.dispose()
    # the password reached dbt through its environment only
    assert PASSWORD not in caplog.text


def test_a_missing_fx_rate_on_postgres_names_the_stored_rows(
    pg_database: str, tmp_path: Path, raw_parquet: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The FX completeness test stores its rows in the build's ops schema; the error
    quotes them, read through the warehouse's connection, and abandoning the build
    leaves no schema of it behind."""
    monkeypatch.delenv("DBT_POSTGRES_THREADS", raising=False)
    engine = sa.create_engine(pg_database)
    pg = PostgresWarehouse(pg_database)
    build = pg.begin_build("r1")
    try:
        _load(pg, build, raw_parquet)
        pg.execute(
            "insert into {raw}.orders values (?, 1, 'paid', 'SEK', 5.00, "
            "cast(? as timestamptz), cast(? as timestamptz), 'r1', now())",
            [12, "2024-01-16 12:00:00+00", "2024-01-16 12:00:00+00"],
            build=build,
        )
        plan = BuildPlan("UTC", unit_tests=False, target_dir=tmp_path / "dbt-postgres")
        with pytest.raises(DbtError) as caught:
            dbt_build(pg, plan, build=build)
        assert (
            "dbt test assert_fx_rate_exists_for_every_counted_order failed: 1 row, e.g. "
            "currency=SEK business_date=2024-01-16 order_count=1 example_order_id=12"
        ) in str(caught.value)
        fx = next(n for n in caught.value.result.nodes if n.name.startswith("assert_fx_rate"))
        assert f'"ops__build_{build.token}"' in str(fx.relation_name)
        assert _published_tables(engine) == {}
    finally:
        pg.abandon_build(build)
        try:
            assert not [s for s in _schemas(engine) if "__build_" in s]
        finally:
            engine.dispose()


# --- the build's schemas → the suffix, and the targets ---------------------------------


def _pg_build(token: str = "r1_0a1b2c3d") -> Build:
    schemas = {s: f"{s}__build_{token}" for s in PUBLISHED_SCHEMAS}
    return Build(backend="postgres", run_id="r1", token=token, base=0, schemas=schemas)


def test_suffix_of_a_build() -> None:
    assert build_schema_suffix(_pg_build()) == "__build_r1_0a1b2c3d"
    same = {s: s for s in PUBLISHED_SCHEMAS}
    duck = Build(backend="duckdb", run_id="r1", token="f", base=None, schemas=same)
    assert build_schema_suffix(duck) == ""


@pytest.mark.parametrize(
    "change",
    [
        {"marts": "marts__build_other_token"},  # another build's schema
        {"raw": "raw"},  # one schema left published
        {"analytics": "analytics_r1_0a1b2c3d"},  # not <schema>__build_<token>
    ],
)
def test_a_build_with_mixed_schemas_is_refused(change: dict[str, str]) -> None:
    build = _pg_build()
    build = replace(build, schemas={**build.schemas, **change})
    with pytest.raises(WarehouseError, match="__build_r1_0a1b2c3d"):
        build_schema_suffix(build)


def test_a_build_without_a_dbt_schema_is_refused() -> None:
    build = _pg_build()
    del build.schemas["snapshots"]
    with pytest.raises(WarehouseError, match="no schema for snapshots"):
        build_schema_suffix(build)


def test_postgres_target_env() -> None:
    wh = PostgresWarehouse("postgresql+psycopg://etl:s%40cret@db.example:5433/dw?sslmode=require")
    target = dbt_target(wh, _pg_build())
    assert target.name == "postgres" and target.warehouse_path is None
    assert target.env == {
        "DBT_POSTGRES_HOST": "db.example",
        "DBT_POSTGRES_PORT": "5433",
        "DBT_POSTGRES_USER": "etl",
        "DBT_POSTGRES_PASSWORD": "s@cret",
        "DBT_POSTGRES_DBNAME": "dw",
        "DBT_POSTGRES_SCHEMA": "staging__build_r1_0a1b2c3d",
        "PGSSLMODE": "require",
        SCHEMA_SUFFIX_ENV: "__build_r1_0a1b2c3d",
    }
    assert "s@cret" not in repr(target)
    assert postgres_env("postgresql://etl@/dw")["DBT_POSTGRES_PORT"] == "5432"
    with pytest.raises(WarehouseError, match="needs a build"):
        dbt_target(wh, None)
    published = replace(_pg_build(), schemas={s: s for s in PUBLISHED_SCHEMAS})
    with pytest.raises(WarehouseError, match="writes only"):
        dbt_target(wh, published)


def test_duckdb_target_is_the_build_file(tmp_path: Path) -> None:
    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    same = {s: s for s in PUBLISHED_SCHEMAS}
    build = Build("duckdb", "r1", "t", None, same, path=tmp_path / "w.duckdb.r1.build")
    target = dbt_target(wh, build)
    assert (target.name, target.warehouse_path) == ("duckdb", build.path)
    assert target.env == {SCHEMA_SUFFIX_ENV: ""}
    assert dbt_target(wh).warehouse_path == tmp_path / "w.duckdb"
    with pytest.raises(WarehouseError, match="duckdb build, not postgres"):
        dbt_target(PostgresWarehouse("postgresql://x@h/d"), build)


def test_a_kind_without_a_target_is_refused() -> None:
    class BigQueryish:
        kind = "bigquery"

    with pytest.raises(WarehouseError, match="cannot run on a bigquery warehouse yet"):
        dbt_target(BigQueryish())  # type: ignore[arg-type]
