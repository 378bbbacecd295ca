"""The project compiles for Snowflake and BigQuery, offline, with each warehouse's dialect.

Their adapters cannot be installed next to Airflow's pins, so `make adapters-venv` puts
them into `.venv-adapters` (requirements-adapters.txt); the first run creates it (2-13
minutes from PyPI here, depending on the machine's load), later runs reuse it. `dbt compile --no-introspect` with the
session's relation cache off never connects: the dummy credentials below would fail.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from warehouse.dbt_runner import DEFAULT_PROJECT_DIR, run_dbt

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS_VENV = ROOT / ".venv-adapters"
REPORT_TZ = "America/New_York"

# What the dispatched macros (macros/portable.sql, business_day.sql, usd_cents_half_up.sql)
# must compile to, per warehouse, and what must not leak in from another dialect.
EXPECTED: dict[str, dict[str, Any]] = {
    "snowflake": {
        "int_orders_converted": [
            f"cast(convert_timezone('{REPORT_TZ}', orders.created_at) as date) as business_date",
            "regexp_like(users.region, ",
            "cast(orders_dated.total as decimal(38, 18))",
        ],
        "stg_orders": ["cast(created_at as timestamp_tz) as created_at"],
        "fct_orders": ["cast(orders_converted.region as varchar) as region"],
        "relation": "snowdb.raw.orders",
        "absent": ["hugeint", "cast(timezone(", "at time zone", "collate"],
    },
    "bigquery": {
        "int_orders_converted": [
            f"date(orders.created_at, '{REPORT_TZ}') as business_date",
            "regexp_contains(users.region, r'",
            "cast(orders_dated.total as bignumeric)",
        ],
        "stg_orders": ["cast(created_at as timestamp) as created_at"],
        "fct_orders": ["cast(orders_converted.region as string) as region"],
        "relation": "`dummy-project`.`raw`.`orders`",
        "absent": ["hugeint", "cast(timezone(", "at time zone", "collate", "as varchar"],
    },
}


@pytest.fixture(scope="session")
def adapters_dbt() -> Path:
    """`.venv-adapters/bin/dbt`, created by `make adapters-venv` if missing (locked: one
    pytest process builds it, the others wait)."""
    lock_path = ROOT / ".venv-adapters.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(
            ["make", "--no-print-directory", "adapters-venv", f"PYTHON={sys.executable}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert done.returncode == 0, f"make adapters-venv failed:\n{done.stdout}\n{done.stderr}"
    dbt = ADAPTERS_VENV / "bin" / "dbt"
    assert dbt.is_file()
    return dbt


def _dummy_credentials(tmp_path: Path) -> dict[str, str]:
    """Every env var profiles.yml reads for both targets; a well-formed service-account
    key (BigQuery parses it when the adapter starts; it signs nothing here)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    keyfile = tmp_path / "service-account.json"
    keyfile.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "dummy-project",
                "private_key_id": "0",
                "private_key": pem,
                "client_email": "dbt@dummy-project.iam.gserviceaccount.com",
                "client_id": "0",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return {
        "DBT_SNOWFLAKE_ACCOUNT": "dummy-account",
        "DBT_SNOWFLAKE_USER": "dummy",
        "DBT_SNOWFLAKE_PASSWORD": "dummy",
        "DBT_SNOWFLAKE_ROLE": "dummy",
        "DBT_SNOWFLAKE_DATABASE": "snowdb",
        "DBT_SNOWFLAKE_WAREHOUSE": "dummy",
        "DBT_SNOWFLAKE_SCHEMA": "public",
        "DBT_BIGQUERY_KEYFILE": str(keyfile),
        "DBT_BIGQUERY_PROJECT": "dummy-project",
        "DBT_BIGQUERY_DATASET": "public",
        "WAREHOUSE_PATH": "/dev/null",
    }


@pytest.mark.parametrize("target", ["snowflake", "bigquery"])
def test_compiles_offline_in_the_warehouse_dialect(
    target: str, adapters_dbt: Path, tmp_path: Path
) -> None:
    target_dir = tmp_path / "target"
    result = run_dbt(
        ["compile", "--no-populate-cache", "--no-introspect"],
        project_dir=DEFAULT_PROJECT_DIR,
        target=target,
        vars={"report_tz": REPORT_TZ, "through_date": "2024-01-16", "run_id": None},
        env=_dummy_credentials(tmp_path),
        dbt=adapters_dbt,
        target_dir=target_dir,
    )
    manifest = json.loads((target_dir / "manifest.json").read_text())
    assert manifest["metadata"]["adapter_type"] == target
    compiled = {n.name: n for n in result.nodes}
    kinds = {n.resource_type for n in result.nodes}
    assert kinds == {"model", "test", "snapshot"}
    assert all(n.status == "success" for n in result.nodes)
    models = {n["name"] for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    assert models <= set(compiled), f"not compiled: {models - set(compiled)}"

    code = {
        n["name"]: n["compiled_code"]
        for n in manifest["nodes"].values()
        if n["resource_type"] == "model" and n.get("compiled_code")
    }
    expected = EXPECTED[target]
    for model in ("int_orders_converted", "stg_orders", "fct_orders"):
        for fragment in expected[model]:
            assert fragment in code[model], f"{target} {model}: no {fragment!r}"
    assert expected["relation"] in code["stg_orders"]
    everything = "\n".join(code.values()).lower()
    for fragment in expected["absent"]:
        assert fragment not in everything, f"{target}: another dialect's {fragment!r}"
