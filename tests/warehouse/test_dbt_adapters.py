"""The project compiles for Snowflake and BigQuery, offline, with each warehouse's dialect.

Their adapters cannot be installed next to Airflow's pins, so `make adapters-venv` puts
them into `.venv-adapters` (requirements-adapters.txt); the first run creates it (2-13
minutes from PyPI here, depending on the machine's load), later runs reuse it. `dbt compile --no-introspect` with the
session's relation cache off never connects: the dummy credentials below would fail.
"""

from __future__ import annotations

import fcntl
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from warehouse.dbt_runner import DEFAULT_PROJECT_DIR, DbtCall, run_dbt

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
        "stg_orders": [
            "cast(created_at as timestamp_tz) as created_at",
            "cast(total as decimal(12, 2)) as total",
        ],
        "stg_fx_rates": ["cast(rate as decimal(38, 18)) as rate"],
        "sales_summary": [
            "cast(cast(sum(usd_cents) as decimal(38, 0)) * 0.01 as decimal(18, 2))",
        ],
        "fct_orders": ["cast(orders_converted.region as varchar) as region"],
        "relation": "snowdb.raw.orders",
        "contract_rate": "decimal(38,18)",
        "contract_total": "decimal(18,2)",
        "absent": ["hugeint", "cast(timezone(", "at time zone", "collate"],
    },
    "bigquery": {
        "int_orders_converted": [
            f"date(orders.created_at, '{REPORT_TZ}') as business_date",
            "regexp_contains(users.region, r'",
            "cast(orders_dated.total as bignumeric)",
        ],
        "stg_orders": [
            "cast(created_at as timestamp) as created_at",
            "cast(total as numeric(12, 2)) as total",
        ],
        "stg_fx_rates": ["cast(rate as bignumeric(38, 18)) as rate"],
        "sales_summary": [
            "cast(cast(sum(usd_cents) as bignumeric(38, 0)) * 0.01 as numeric(18, 2))",
        ],
        "fct_orders": ["cast(orders_converted.region as string) as region"],
        "relation": "`dummy-project`.`raw`.`orders`",
        "contract_rate": "bignumeric(38, 18)",
        "contract_total": "numeric(18, 2)",
        "absent": ["hugeint", "cast(timezone(", "at time zone", "collate", "as varchar"],
    },
}


# BigQuery's exact decimal types (DECIMAL and BIGDECIMAL are aliases): NUMERIC(P, S) takes
# 0 <= S <= 9 and max(1, S) <= P <= S + 29, BIGNUMERIC(P, S) 0 <= S <= 38 and
# max(1, S) <= P <= S + 38; without (P, S) they are NUMERIC(38, 9) and BIGNUMERIC(76.76, 38).
# Anything else compiles, and fails when BigQuery runs it.
BIGQUERY_DECIMAL = re.compile(
    r"\b(bignumeric|bigdecimal|numeric|decimal)\b(?:\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?",
    re.IGNORECASE,
)
BIGQUERY_MAX_SCALE_AND_INTEGER_DIGITS = {"numeric": (9, 29), "bignumeric": (38, 38)}


def bigquery_decimal_errors(text: str) -> list[str]:
    """Every decimal type in `text` that BigQuery does not accept."""
    errors = []
    for found in BIGQUERY_DECIMAL.finditer(text):
        name, precision, scale = found.groups()
        if precision is None:
            continue
        kind = "bignumeric" if name.lower().startswith("big") else "numeric"
        max_scale, max_integer_digits = BIGQUERY_MAX_SCALE_AND_INTEGER_DIGITS[kind]
        p, s = int(precision), int(scale or 0)
        if not (0 <= s <= max_scale and max(1, s) <= p <= s + max_integer_digits):
            errors.append(found.group(0))
    return errors


def test_the_bigquery_decimal_check_refuses_what_bigquery_refuses() -> None:
    """The check the BigQuery compile below relies on: the types these models had before
    they used macros/decimal_type.sql fail it, the ones they use now pass."""
    old = "cast(rate as decimal(38, 18)) as rate, cast(sum(usd_cents) as decimal(38, 0))"
    assert bigquery_decimal_errors(old) == ["decimal(38, 18)", "decimal(38, 0)"]
    assert bigquery_decimal_errors("decimal(38,18)") == ["decimal(38,18)"]
    for refused in (
        "numeric(38, 18)",
        "NUMERIC(30)",
        "numeric(10, 10)",
        "bignumeric(77, 38)",
        "bigdecimal(40, 39)",
        "numeric(0)",
    ):
        assert bigquery_decimal_errors(f"cast(x as {refused})") == [refused], refused
    accepted = (
        "cast(x as numeric(18, 2)), cast(x as NUMERIC(29)), cast(x as decimal(12,2)), "
        "cast(x as bignumeric(38, 18)), cast(x as bignumeric(38, 0)), cast(x as bignumeric), "
        "cast(x as numeric), cast(x as bigdecimal(76, 38)) -- 18 decimals"
    )
    assert bigquery_decimal_errors(accepted) == []


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
        "DBT_DUCKDB_PATH": "/dev/null",
    }


@pytest.mark.parametrize("target", ["snowflake", "bigquery"])
def test_compiles_offline_in_the_warehouse_dialect(
    target: str, adapters_dbt: Path, tmp_path: Path
) -> None:
    target_dir = tmp_path / "target"
    result = run_dbt(
        ["compile", "--no-populate-cache", "--no-introspect"],
        DbtCall(
            project_dir=DEFAULT_PROJECT_DIR,
            target=target,
            vars={"report_tz": REPORT_TZ, "through_date": "2024-01-16", "run_id": None},
            env=_dummy_credentials(tmp_path),
            dbt=adapters_dbt,
            target_dir=target_dir,
        ),
    )
    manifest = json.loads((target_dir / "manifest.json").read_text())
    assert manifest["metadata"]["adapter_type"] == target
    compiled = {n.name: n for n in result.nodes}
    kinds = {n.resource_type for n in result.nodes}
    assert kinds == {"model", "test", "snapshot"}
    assert all(n.status == "success" for n in result.nodes)
    models = {n["name"] for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    assert models <= set(compiled), f"not compiled: {models - set(compiled)}"

    code = {  # layout-free: one space between tokens, none inside parentheses (sqlfluff
        # may wrap a long expression over lines)
        n["name"]: re.sub(
            r"\(\s+", "(", re.sub(r"\s+\)", ")", re.sub(r"\s+", " ", n["compiled_code"]))
        )
        for n in manifest["nodes"].values()
        if n["resource_type"] == "model" and n.get("compiled_code")
    }
    expected = EXPECTED[target]
    for model in (
        "int_orders_converted",
        "stg_orders",
        "stg_fx_rates",
        "sales_summary",
        "fct_orders",
    ):
        for fragment in expected[model]:
            assert fragment in code[model], f"{target} {model}: no {fragment!r}"
    assert expected["relation"] in code["stg_orders"]
    everything = "\n".join(code.values()).lower()
    for fragment in expected["absent"]:
        assert fragment not in everything, f"{target}: another dialect's {fragment!r}"

    contracts = {
        (n["name"], column): spec.get("data_type") or ""
        for n in manifest["nodes"].values()
        if n["resource_type"] == "model"
        for column, spec in n["columns"].items()
    }
    assert contracts[("fx_rates", "rate")] == expected["contract_rate"]
    assert contracts[("sales_summary", "total_sales_usd")] == expected["contract_total"]
    if target == "bigquery":
        # the models' casts (macros/decimal_type.sql) and their contracts (target.type in
        # the schema YAML): only types BigQuery runs
        for model, sql in code.items():
            assert not bigquery_decimal_errors(sql), f"{model}: {bigquery_decimal_errors(sql)}"
        for (model, column), data_type in contracts.items():
            assert not bigquery_decimal_errors(data_type), f"{model}.{column}: {data_type}"
            assert "varchar" not in data_type and "time zone" not in data_type, (
                f"{model}.{column}: {data_type}"
            )
