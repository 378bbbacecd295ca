"""Where dbt writes, by target (macros/generate_schema_name.sql): the nightly's targets
keep the production schema names (plus the build suffix); a developer's `dev` target gets
dbt's default `<target schema>_<custom>`, so developers sharing a warehouse never write
the published schemas or each other's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.warehouse.test_dbt_project import EXPECTED_NEW_YORK, PROJECT_DIR, RAW_SQL, SUMMARY_SQL
from warehouse.dbt_runner import DbtCall, postgres_env, run_dbt

DUMMY = {
    "DBT_POSTGRES_USER": "dummy",
    "DBT_POSTGRES_PASSWORD": "dummy",
    "DBT_POSTGRES_DBNAME": "dummy",
    "DBT_POSTGRES_SCHEMA": "dummy",
    "DBT_DUCKDB_PATH": os.devnull,
}


def _schemas(target: str, tmp_path: Path, **env: str) -> dict[str, str]:
    """resource name -> schema, from `dbt parse` (no connection) for `target`."""
    target_dir = tmp_path / target
    run_dbt(
        ["parse"],
        DbtCall(
            project_dir=PROJECT_DIR,
            target=target,
            vars={},
            env={**DUMMY, **env},
            target_dir=target_dir,
        ),
    )
    manifest = json.loads((target_dir / "manifest.json").read_text())
    nodes = {**manifest["nodes"], **manifest["sources"]}
    return {
        n["name"] if n["resource_type"] != "source" else f"source:{n['name']}": n["schema"]
        for n in nodes.values()
        if n["resource_type"] in ("model", "snapshot", "source")
    }


def test_developers_get_their_own_schemas_and_the_nightly_the_published_ones(
    tmp_path: Path,
) -> None:
    alice = _schemas("dev", tmp_path, DBT_DEV_SCHEMA="dbt_alice")
    assert alice["stg_orders"] == "dbt_alice_staging"
    assert alice["sales_summary"] == "dbt_alice_analytics"
    assert alice["fct_orders"] == "dbt_alice_marts"
    assert alice["users_snapshot"] == "dbt_alice_snapshots"
    assert alice["source:orders"] == "raw"  # every developer reads the published raw
    bob = _schemas("dev", tmp_path / "bob", DBT_DEV_SCHEMA="dbt_bob")
    assert not {v for k, v in alice.items() if not k.startswith("source:")} & set(bob.values())

    nightly = _schemas("postgres", tmp_path, DBT_NIGHTSHIFT_SCHEMA_SUFFIX="__build_t1")
    assert nightly["sales_summary"] == "analytics__build_t1"
    assert nightly["users_snapshot"] == "snapshots__build_t1"
    assert nightly["source:orders"] == "raw__build_t1"
    assert _schemas("duckdb", tmp_path)["sales_summary"] == "analytics"


def test_a_dev_build_on_postgres_writes_only_the_developers_schemas(
    pg_database: str, tmp_path: Path
) -> None:
    url = sa.make_url(pg_database)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            raw_sql = RAW_SQL.replace("CREATE OR REPLACE TABLE", "CREATE TABLE")
            for statement in raw_sql.split(";"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
        # the connection as the nightly passes it to dbt (warehouse/dbt_runner.py)
        env = {**postgres_env(pg_database), "DBT_DEV_SCHEMA": "dbt_alice"}
        env["DBT_DUCKDB_PATH"] = os.devnull
        result = run_dbt(
            ["build", "--exclude-resource-type", "unit_test"],
            DbtCall(
                project_dir=PROJECT_DIR,
                target="dev",
                vars={"report_tz": "America/New_York"},
                env=env,
                target_dir=tmp_path,
            ),
        )
        assert result.nodes and not result.failed
        with engine.connect() as conn:
            schemas = {
                r[0]
                for r in conn.exec_driver_sql(
                    "select nspname from pg_namespace where left(nspname, 3) <> 'pg_' "
                    "and nspname not in ('information_schema', 'public')"
                )
            }
            rows = [
                tuple(r)
                for r in conn.exec_driver_sql(
                    SUMMARY_SQL.replace("analytics.", "dbt_alice_analytics.")
                )
            ]
        assert schemas == {
            "raw",
            "dbt_alice_staging",
            "dbt_alice_intermediate",
            "dbt_alice_marts",
            "dbt_alice_analytics",
            "dbt_alice_snapshots",
            "dbt_alice_ops",  # the FX completeness test's stored failures (store_failures)
        }
        assert rows == EXPECTED_NEW_YORK
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def _no_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBT_NIGHTSHIFT_SCHEMA_SUFFIX", raising=False)
