"""warehouse/backends/snowflake.py and dbt-snowflake against fakesnow's server.

fakesnow pins its own duckdb and dbt-snowflake conflicts with Airflow's pins, so both
live in .venv-adapters (the main .venv has the connector: the nightly on Snowflake is
tests/e2e/test_snowflake_nightly_emulated.py). Here the raw tables of test_dbt_project.py are written as
Parquet here, and tests/warehouse/snowflake_emulated.py runs them in `.venv-adapters`
(created by `make adapters-venv` when missing, like test_dbt_adapters.py) against
`fakesnow.server()` on loopback, writing what it saw as JSON.

What fakesnow cannot run (no schema CLONE, no SWAP WITH) is probed and must still be
refused; a fakesnow release that runs one fails this test so the emulator path can go.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

from tests.warehouse.test_dbt_adapters import ADAPTERS_VENV, adapters_dbt  # noqa: F401
from tests.warehouse.test_dbt_postgres_parity import OPS_SQL, RAW_TABLES
from tests.warehouse.test_dbt_project import EXPECTED_NEW_YORK, RAW_SQL
from warehouse.backends import backend_for
from warehouse.backends.base import WarehouseError
from warehouse.backends.snowflake import connect_kwargs

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "warehouse" / "snowflake_emulated.py"

# dbt nodes that fail on fakesnow 0.12.1 and why (a node listed here that passes, or a
# failing node not listed, fails the test). dbt-snowflake runs a unit test through
# `create or replace temporary table <db>.<schema>.<test>__dbt_tmp as (…)`; DuckDB under
# fakesnow refuses a qualified temporary table ("TEMPORARY table names can *only* use
# the "temp" catalog"). Real Snowflake accepts it; the unit tests run on DuckDB.
_TEMP_TABLE = "fakesnow: qualified CREATE TEMPORARY TABLE (dbt unit-test fixture table)"
FAKESNOW_DBT_FAILURES: dict[str, str] = {
    "unit_test.nightshift.fct_orders.test_fct_orders_incremental_restates_exactly_the_changed_days": _TEMP_TABLE,
    "unit_test.nightshift.int_orders_categorized.test_category_largest_line_ties_missing_product_and_empty_order": _TEMP_TABLE,
    "unit_test.nightshift.int_orders_converted.test_business_day_dst_new_york": _TEMP_TABLE,
    "unit_test.nightshift.int_orders_converted.test_usd_cents_half_up_region_and_counting": _TEMP_TABLE,
    "unit_test.nightshift.sales_summary.test_sales_summary_counts_sums_cents_and_respects_through_date": _TEMP_TABLE,
}


@pytest.fixture(scope="module")
def emulated(adapters_dbt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: F811
    tmp = tmp_path_factory.mktemp("snowflake")
    parquet = tmp / "parquet"
    parquet.mkdir()
    con = duckdb.connect(str(tmp / "source.duckdb"))
    try:
        con.execute(RAW_SQL)
        con.execute(OPS_SQL)
        con.execute("insert into ops.restated_days values ('r0', '2024-01-15', 'seed')")
        for table in RAW_TABLES:
            con.execute(f"copy {table} to '{parquet / (table + '.parquet')}' (format parquet)")
    finally:
        con.close()
    out = tmp / "report.json"
    done = subprocess.run(
        [str(ADAPTERS_VENV / "bin" / "python"), str(SCRIPT), str(parquet), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (
        f"{SCRIPT.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )
    report = json.loads(out.read_text())
    runs = {k: round(v["seconds"], 1) for k, v in report.get("dbt", {}).get("runs", {}).items()}
    print(
        f"fakesnow {report['versions']['fakesnow']}: script {report['total_s']:.1f} s "
        f"(loader {report['loader']['timings_s']}, dbt {runs})",
        file=sys.stderr,
    )
    return report


def test_fakesnow_still_lacks_the_statements_the_emulator_path_replaces(emulated: dict) -> None:
    for name, outcome in emulated["probes"].items():
        assert outcome.startswith("refused"), (
            f"fakesnow {emulated['versions']['fakesnow']} now runs {name}: "
            "test the real statement instead of the emulator path"
        )


def test_load_merge_delete_publish_read_on_fakesnow(emulated: dict) -> None:
    loader = emulated["loader"]
    assert loader["merge"] == {"inserted": 3, "updated": 3}
    assert loader["deleted"] == 1
    assert loader["published_tables_before"] == 0
    assert loader["generation"] >= 1
    for name, table in loader["tables"].items():
        assert table["columns"], f"{name}: columns differ"
        assert table["equal"], f"{name}: published rows differ from the input ({table})"
    assert loader["tables"]["raw.orders"]["rows"] == 11
    assert "published since" in loader["conflict"]
    assert loader["after_abandon"] == {"ORDERS": 11, "USERS": 4}
    assert loader["rerun_drops_attempt"]


def test_dbt_build_with_dbt_snowflake_on_fakesnow(emulated: dict) -> None:
    dbt = emulated["dbt"]
    assert "nodes" in dbt, f"dbt did not run: {dbt}"
    # an exposure (dbt_project/models/_exposures.yml) is a node that runs nothing: no-op
    exposures = {n for n in dbt["nodes"] if n.startswith("exposure.")}
    assert all(dbt["nodes"][n]["status"] == "no-op" for n in exposures), exposures
    failed = {
        n: r["message"]
        for n, r in dbt["nodes"].items()
        if r["status"] not in ("success", "pass") and n not in exposures
    }
    print(json.dumps(dbt["nodes"], indent=1), file=sys.stderr)
    assert set(failed) == set(FAKESNOW_DBT_FAILURES), failed
    for node in FAKESNOW_DBT_FAILURES:
        assert "TEMPORARY table names can *only* use" in failed[node], failed[node]
    kinds = {}
    for node, result in dbt["nodes"].items():
        if result["status"] in ("success", "pass"):
            kind = node.split(".")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    # every model, the snapshot and every data test of the project ran on fakesnow
    assert kinds.get("model", 0) >= 15 and kinds.get("snapshot") == 1 and kinds.get("test", 0) >= 50
    assert dbt["runs"]["build"]["returncode"] == 0
    expected = [[d.isoformat(), r, str(t), n] for d, r, t, n in EXPECTED_NEW_YORK]
    assert dbt["sales_summary"] == expected


def test_backend_for_a_snowflake_url_and_its_options() -> None:
    """The connector is in .venv: `backend_for` gives the Snowflake warehouse of the URL;
    `emulator=fakesnow` is a URL option of ours, never passed to the connector."""
    from warehouse.backends.snowflake import SnowflakeWarehouse

    url = "snowflake://etl:secret@acme-eu1/analytics_db?warehouse=wh&role=etl"
    settings = SimpleNamespace(warehouse_backend=lambda: "snowflake", warehouse_url=lambda: url)
    wh = backend_for(settings)
    assert isinstance(wh, SnowflakeWarehouse) and wh.emulator is None
    assert "secret" not in wh.describe()
    assert connect_kwargs(url) == {
        "user": "etl",
        "password": "secret",
        "account": "acme-eu1",
        "database": "analytics_db",
        "warehouse": "wh",
        "role": "etl",
    }
    fake = "snowflake://fake:snow@127.0.0.1:8123/NIGHTSHIFT?account=fakesnow&protocol=http"
    emulated = connect_kwargs(fake + "&emulator=fakesnow")
    assert "emulator" not in emulated
    assert emulated["host"] == "127.0.0.1" and emulated["port"] == 8123
    assert emulated["account"] == "fakesnow" and emulated["protocol"] == "http"
    assert SnowflakeWarehouse(fake + "&emulator=fakesnow").emulator == "fakesnow"
    with pytest.raises(WarehouseError, match="emulator"):
        SnowflakeWarehouse(fake + "&emulator=localstack")
    with pytest.raises(WarehouseError, match="unknown snowflake:// URL options: bogus"):
        connect_kwargs(url + "&bogus=1")


def test_snowflake_sql_folds_quoted_lower_case_names_and_rewrites_idioms() -> None:
    from warehouse.backends.snowflake import exact_sums, snowflake_sql, split_statements

    sql = (
        'select "id", "Total", "order-ref", now(), cast(timezone(?, o.created_at) as date), '
        '\'now() "x"\' from "raw__build_a1"."orders" o; '
        "create table t (d json not null)"
    )
    assert snowflake_sql(sql) == (
        'select "ID", "Total", "order-ref", current_timestamp(), '
        "cast(convert_timezone(?, o.created_at) as date), "
        '\'now() "x"\' from "RAW__BUILD_A1"."ORDERS" o; '
        "create table t (d varchar not null)"
    )
    assert snowflake_sql("select count(*) filter (where x > 1) from t") == (
        "select count_if(x > 1) from t"
    )
    assert split_statements("a; b ';' ; ;c") == ["a", "b ';'", "c"]
    assert exact_sums("select sum(a * (b + 1)), sum(distinct c), count(*), summary(d)") == (
        "select sum(cast(a * (b + 1) as number(38, 12))), sum(distinct c), count(*), summary(d)"
    )


def test_dbt_target_of_a_snowflake_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """dbt on a Snowflake build: dbt-snowflake's executable (DBT_SNOWFLAKE_EXECUTABLE),
    the credentials through the environment only, the build's schema suffix."""
    from warehouse.backends.base import Build
    from warehouse.backends.snowflake import SnowflakeWarehouse
    from warehouse.dbt_runner import dbt_target

    wh = SnowflakeWarehouse(
        "snowflake://etl:s3cret@127.0.0.1:8123/NIGHTSHIFT?account=fakesnow&protocol=http"
        "&warehouse=wh&role=r&emulator=fakesnow"
    )
    token = "2026_11_18_abc123"
    build = Build("snowflake", "2026-11-18", token, 0, wh._build_schemas(token))
    monkeypatch.setenv("DBT_SNOWFLAKE_EXECUTABLE", str(tmp_path / "missing-dbt"))
    with pytest.raises(WarehouseError, match="make adapters-venv"):
        dbt_target(wh, build)
    dbt = tmp_path / "dbt"
    dbt.write_text("")
    monkeypatch.setenv("DBT_SNOWFLAKE_EXECUTABLE", str(dbt))
    target = dbt_target(wh, build)
    assert target.name == "snowflake" and target.executable == dbt
    assert target.env["DBT_SNOWFLAKE_PASSWORD"] == "s3cret"
    assert "s3cret" not in repr(target)
    assert target.env["DBT_NIGHTSHIFT_SCHEMA_SUFFIX"] == f"__build_{token}"
    assert target.env["DBT_SNOWFLAKE_SCHEMA"] == f"staging__build_{token}"
    assert target.env["DBT_SNOWFLAKE_HOST"] == "127.0.0.1"
    assert target.env["DBT_SNOWFLAKE_PORT"] == "8123"
    assert target.env["DBT_SNOWFLAKE_THREADS"] == "1"  # fakesnow: one at a time
    with pytest.raises(WarehouseError, match="needs a build"):
        dbt_target(wh, None)
