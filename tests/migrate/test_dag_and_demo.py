"""`migration_verify` through real Airflow (`airflow dags test`) against real databases,
and `make migration-demo` end to end (small)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from migrate.db import make_engine
from migrate.state import checks, gates
from pipeline.airflow_run import airflow_bin, airflow_env, ensure_airflow_initialised

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _dags_test(env: dict[str, str], conf: dict) -> subprocess.CompletedProcess:
    cmd = [airflow_bin(), "dags", "test", "migration_verify", "--conf", json.dumps(conf)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_migration_verify_dag(engines, mappings, old_sqlite_url, new_pg_url, tmp_path) -> None:
    old, new = engines
    tables = ["orders", "customers"]
    env = airflow_env(
        {
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW_CONN_SOURCE_DB": old_sqlite_url,
            "AIRFLOW_CONN_MIGRATION_TARGET_DB": new_pg_url,
        }
    )
    ensure_airflow_initialised(env)

    # dual writes are on: no backfill, nothing to verify yet (both shown skipped), the
    # gate still decides
    first = _dags_test(env, {"phase": 1, "tables": tables})
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-3000:]
    assert "reason='no backfill in phase 1: history is copied in phases 2 and 3'" in out
    assert out.count("reason='no verification in phase 1: dual writes just began'") == 2

    ok = _dags_test(env, {"phase": 3, "tables": tables})
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "phase 3 (read from new and verify): GO" in ok.stdout + ok.stderr

    no = _dags_test(env, {"phase": 4, "tables": tables, "required_clean_runs": 3})
    out = no.stdout + no.stderr
    assert no.returncode != 0
    assert "gate 'clean_runs' failed: orders has 2 of 3 consecutive clean verifications" in out
    assert "reason='no backfill in phase 4: history is copied in phases 2 and 3'" in out

    with new.connect() as conn:
        checked = conn.execute(
            sa.select(checks.c.run_id, checks.c.phase, checks.c.table_name, checks.c.clean)
        ).all()
        decided = conn.execute(
            sa.select(gates.c.phase, gates.c.allowed, gates.c.failed_gate).order_by(gates.c.id)
        ).all()
    # each DAG run verified each table once, under its own run id
    assert sorted((c.phase, c.table_name, c.clean) for c in checked) == [
        (3, "customers", True),
        (3, "orders", True),
        (4, "customers", True),
        (4, "orders", True),
    ]
    assert len({c.run_id for c in checked}) == 2
    assert [tuple(d) for d in decided] == [
        (1, True, None),
        (3, True, None),
        (4, False, "clean_runs"),
    ]


def test_migration_demo(postgres_admin_url, tmp_path) -> None:
    database = f"nightshift_migration_demo_test_{os.getpid()}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NIGHTSHIFT_MIGRATION_PG_URL": postgres_admin_url,
    }
    cmd = [
        sys.executable, "-m", "demo.migration", "--data-dir", str(tmp_path), "--database", database,
        "--days", "4", "--orders-per-day", "60", "--app-seconds", "4", "--fail-every", "5",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    finally:
        admin = make_engine(postgres_admin_url).execution_options(isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "writes to new failed (injected)" in out
    assert "phase 4 (stop writing old): NO-GO: gate" in out  # before the replay
    assert "phase 4 (stop writing old): GO" in out
    assert "phase 5 (decommission old): GO" in out
    assert out.rstrip().endswith("VERDICT: old and new agree; cutover allowed")
