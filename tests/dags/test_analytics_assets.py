"""The nightly's Airflow Assets through real Airflow (`airflow dags test`, SQLite
metadata): a publish that changes `analytics.*` records one asset event per table, with
the run in its extra, and queues `analytics_export` (the rows the scheduler turns into an
asset-triggered run; no scheduler runs here: it would need the API server and workers);
a rerun that publishes the same rows skips `announce_analytics` and records no event.
The export then writes the published tables as Parquet.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from demo.generator import generate
from demo.run import running_api
from pipeline.airflow_run import airflow_bin, airflow_env, ensure_airflow_initialised, run_dag
from warehouse.backends.duckdb import DuckDBWarehouse

DAY = date(2026, 3, 2)
URIS = {
    "x-nightshift://warehouse/analytics/sales_summary",
    "x-nightshift://warehouse/analytics/daily_sales",
}


def _events(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(
            "select a.uri, e.source_dag_id, e.source_task_id, e.extra "
            "from asset_event e join asset a on a.id = e.asset_id order by e.id"
        ).fetchall()


def _queued(db: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "select a.uri, q.target_dag_id from asset_dag_run_queue q "
            "join asset a on a.id = q.asset_id"
        ).fetchall()
    return set(rows)


def _announce_states(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "select ti.state from task_instance ti join dag_run r on r.run_id = ti.run_id "
            "and r.dag_id = ti.dag_id where ti.dag_id = 'nightly_sales' "
            "and ti.task_id = 'announce_analytics' order by r.id"
        ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_publish_that_changes_analytics_triggers_the_export_and_a_rerun_does_not(
    tmp_path: Path,
) -> None:
    source, payments = tmp_path / "source.db", tmp_path / "payments.db"
    generate(
        f"sqlite:///{source}",
        seed=11,
        days=3,
        end_date=DAY,
        orders_per_day=8,
        payments_db=payments,
        if_exists="replace",
    )
    home, data = tmp_path / "airflow", tmp_path / "data"
    with running_api(payments, token="assets-tok") as api_uri:
        env = airflow_env(
            {
                "AIRFLOW_HOME": str(home),
                "NIGHTSHIFT_DATA_DIR": str(data),
                "WAREHOUSE_PATH": str(data / "warehouse.duckdb"),
                "REPORT_TZ": "UTC",
                "AIRFLOW_CONN_SOURCE_DB": f"sqlite:///{source}",
                "AIRFLOW_CONN_PAYMENTS_API": api_uri,
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            }
        )
        ensure_airflow_initialised(env)
        # every DAG in the metadata DB, as the dag-processor would have it: the export's
        # schedule on the assets is what queues it
        subprocess.run([airflow_bin(), "dags", "reserialize"], env=env, check=True)
        db = home / "airflow.db"
        assert _events(db) == []

        run_dag(DAY, env)
        events = _events(db)
        assert {e[0] for e in events} == URIS and len(events) == 2, events
        for _, dag_id, task_id, extra in events:
            assert (dag_id, task_id) == ("nightly_sales", "announce_analytics")
            extra = json.loads(extra)
            assert extra["run_id"] == DAY.isoformat() and extra["horizon"] == DAY.isoformat()
            assert extra["changed_tables"] == ["analytics.sales_summary", "analytics.daily_sales"]
        assert _queued(db) == {(uri, "analytics_export") for uri in URIS}
        assert _announce_states(db) == ["success"]

        # the same day again (`dags test` replaces the run of the same logical date), the
        # same source, the same rows: published unchanged
        run_dag(DAY, env)
        assert len(_events(db)) == 2, _events(db)
        assert _announce_states(db) == ["skipped"]

        subprocess.run([airflow_bin(), "dags", "test", "analytics_export"], env=env, check=True)
    exported = data / "exports" / "analytics"
    warehouse = DuckDBWarehouse(data / "warehouse.duckdb")
    for table in ("sales_summary", "daily_sales"):
        published = warehouse.read_arrow(f"select count(*) as n from {{analytics}}.{table}")
        rows = published.column("n")[0].as_py()
        assert rows > 0 and pq.read_table(exported / f"{table}.parquet").num_rows == rows
    assert json.loads((exported / "manifest.json").read_text())["rows"]["daily_sales"] > 0


def test_the_export_names_the_latest_nightly_run_of_its_asset_events() -> None:
    """A scheduled export records the run the asset events name (the latest, when the
    scheduler gathered several); by hand (no events) it names none."""
    import importlib.util
    from types import SimpleNamespace

    path = Path(__file__).resolve().parents[2] / "dags" / "analytics_export.py"
    spec = importlib.util.spec_from_file_location("analytics_export_dag", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    events = {
        "analytics.sales_summary": [
            SimpleNamespace(extra={"run_id": "2026-03-01"}),
            SimpleNamespace(extra={}),
        ],
        "analytics.daily_sales": [SimpleNamespace(extra={"run_id": "2026-03-02"})],
    }
    module.get_current_context = lambda: {"triggering_asset_events": events}
    assert module._triggering_run_id() == "2026-03-02"
    module.get_current_context = lambda: {"triggering_asset_events": {}}
    assert module._triggering_run_id() is None
