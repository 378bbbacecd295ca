"""DAG integrity: every DAG file imports cleanly, fast, and without heavy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
# (sqlalchemy is not among them: airflow.sdk itself loads it before the DAG file runs)
HEAVY = ("pandas", "duckdb", "great_expectations", "dbt", "pyarrow", "matplotlib", "psycopg")
# The steps module imports every layer at its top: a task loads it, the parse never does.
STEPS = "pipeline.nightly"

_PROBE = """
import json, sys, time, importlib.util
import airflow.sdk  # Airflow itself is allowed; measure the DAG file on top of it
before = set(sys.modules)
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
elapsed = time.perf_counter() - t0
new = sorted({m.split(".")[0] for m in set(sys.modules) - before})
print(json.dumps({"seconds": elapsed, "new_modules": new, "steps": "pipeline.nightly" in sys.modules}))
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        PYTHONPATH=str(ROOT),
        # Any DB or network access at parse time would fail against these.
        AIRFLOW_CONN_SOURCE_DB="postgresql://nobody@127.0.0.1:1/none",
        AIRFLOW_CONN_PAYMENTS_API="http://:token@127.0.0.1:1",
    )
    return env


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "nightly_sales" in dagbag.dags
    assert "migration_verify" in dagbag.dags
    assert "analytics_export" in dagbag.dags


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_is_light_and_fast(dag_file: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(dag_file)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    heavy = [m for m in probe["new_modules"] if m in HEAVY]
    assert heavy == [], f"{dag_file.name} imports heavy modules at parse time: {heavy}"
    assert not probe["steps"], f"{dag_file.name} imports {STEPS} at parse time"
    # the settings model is built by the tasks that read it, not by the parse (~95 ms)
    assert "pydantic_settings" not in probe["new_modules"], (
        f"{dag_file.name} builds the settings model at parse time"
    )
    assert probe["seconds"] < 2.0, f"{dag_file.name} took {probe['seconds']:.2f}s to parse"


def test_nightly_sales_shape(dagbag) -> None:
    dag = dagbag.dags["nightly_sales"]
    assert dag.doc_md and "business day" in dag.doc_md
    assert set(dag.tags) >= {"nightly", "sales"}
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    # A DeadlineAlert sends an alert while a run is still going past its deadline.
    assert [d.callback.path for d in dag.deadline] == ["alerting.callbacks.on_deadline_missed"]
    assert dag.start_date.tzinfo is not None
    assert dag.timetable.expression == "0 2 * * *"
    assert str(dag.timetable.timezone) == os.environ.get("REPORT_TZ", "UTC")
    order = [
        "extract_source_db",
        "load_source_db",
        "extract_payments_api",
        "load_payments_api",
        "dbt_build",
        "transform_daily_sales",
        "check_parity",
        "publish",
        "build_report",
        "check_alerts",
        "apply_retention",
    ]
    assert set(order) | {"announce_analytics", "release_warehouse"} == set(dag.task_ids)
    # the run's warehouse lease is given up once every task is done, failed or not,
    # and that teardown does not decide the run's state
    release = dag.get_task("release_warehouse")
    assert release.is_teardown
    assert set(release.upstream_task_ids) == set(order) | {"announce_analytics"}
    assert set(dag.params.keys()) == {
        "business_date",
        "full_refresh",
        "allow_mass_delete",
        "accept_schema_drift",
    }
    assert dag.params["accept_schema_drift"] == ""
    # an operator asks for a full rebuild, or lets one run past the mass-delete guard
    assert dag.params["full_refresh"] is False and dag.params["allow_mass_delete"] is False
    # the two extracts run at once: pinned in test_extracts_run_in_parallel
    serial = [t for t in order if t != "extract_payments_api"]
    for upstream, downstream in zip(serial, serial[1:], strict=False):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    for task_id in (
        "load_source_db",
        "load_payments_api",
        "dbt_build",
        "transform_daily_sales",
        "publish",
    ):
        assert dag.get_task(task_id).pool == "warehouse_writer"
    for task in dag.tasks:
        assert task.owner == "data-platform"
        assert task.on_failure_callback, f"{task.task_id} has no failure alert"
        assert task.on_retry_callback, f"{task.task_id} has no retry alert"
    assert dag.get_task("extract_source_db").retries >= 1
    assert dag.get_task("extract_payments_api").retries >= 1
    assert dag.get_task("load_payments_api").retries >= 1  # it calls the API for FX rates


def _ancestors(dag, task_id: str) -> set[str]:
    seen: set[str] = set()
    todo = [task_id]
    while todo:
        for up in dag.get_task(todo.pop()).upstream_task_ids:
            if up not in seen:
                seen.add(up)
                todo.append(up)
    return seen


def test_extracts_run_in_parallel(dagbag) -> None:
    """issue 16: `extract_source_db` and `extract_payments_api` read different systems and
    write no warehouse: neither waits for the other (nor for anything), neither takes the
    one-slot `warehouse_writer` pool; `load_payments_api` (which fetches the FX rates of
    the build's days) waits for both the payments and the source_db load."""
    dag = dagbag.dags["nightly_sales"]
    for task_id in ("extract_source_db", "extract_payments_api"):
        assert _ancestors(dag, task_id) == set(), task_id
        assert dag.get_task(task_id).pool != "warehouse_writer", task_id
    assert "extract_payments_api" not in dag.get_task("load_source_db").upstream_task_ids
    assert dag.get_task("load_payments_api").upstream_task_ids == {
        "load_source_db",
        "extract_payments_api",
    }
    assert _ancestors(dag, "dbt_build") >= {
        "extract_source_db",
        "load_source_db",
        "extract_payments_api",
        "load_payments_api",
    }


def test_payments_extract_needs_nothing_from_the_source_db_side(monkeypatch) -> None:
    """The payments extract neither reads the run's build (`load_source_db` makes it) nor
    the source_db landing, nor stages the run's landings from the object store (that would
    remove the concurrent source_db extract's uncommitted stage): the FX rates, which need
    the build's days with orders, are fetched by `load_payments_api`."""
    from pipeline import nightly

    def forbidden(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"extract_payments_api called {name}")

        return fail

    for name in (
        "_run_build",
        "published_horizon",
        "fx_days_needed",
        "fx_days_to_refresh",
        "_full_rebuild_requested",
        "_landing_synced",
        "_push_landing_side_files",
    ):
        monkeypatch.setattr(nightly, name, forbidden(name))
    called: dict[str, object] = {}

    def fake_extract(client, plan):
        called["plan"] = plan
        return {"rows": 3, "quarantined": 0}

    # the steps module's own names for what it calls (imported at its top)
    monkeypatch.setattr(nightly, "extract_payments", fake_extract)
    monkeypatch.setattr(
        nightly, "extract_fx_rates", forbidden("extract_fx_rates (the API extract)")
    )
    monkeypatch.setattr(nightly, "pull_mirror", lambda *a, **k: None)
    monkeypatch.setattr(nightly, "push_mirror", lambda *a, **k: None)
    monkeypatch.setattr(nightly, "_payments_since", lambda: (None, None))
    monkeypatch.setattr(nightly, "open_replays", lambda *a, **k: [])
    monkeypatch.setenv("AIRFLOW_CONN_PAYMENTS_API", "http://:token@127.0.0.1:1")
    from datetime import date

    summary = nightly.extract_payments_api.__wrapped__(date(2026, 11, 27))
    assert summary == {"payments": 3, "payments_quarantined": 0, "payments_replayed": 0}
    assert called["plan"].run_id == "2026-11-27"


def test_the_publish_announces_the_analytics_assets_that_schedule_the_export(dagbag) -> None:
    """`announce_analytics` (after `publish`, nothing waits for it) declares the Assets
    of both published tables; `analytics_export` is scheduled on them."""
    from airflow.sdk import Asset

    uris = {
        "x-nightshift://warehouse/analytics/sales_summary",
        "x-nightshift://warehouse/analytics/daily_sales",
    }
    announce = dagbag.dags["nightly_sales"].get_task("announce_analytics")
    assert announce.upstream_task_ids == {"publish"}
    assert announce.downstream_task_ids == {"release_warehouse"}
    assert {a.uri for a in announce.outlets if isinstance(a, Asset)} == uris
    for task in dagbag.dags["nightly_sales"].tasks:
        if task.task_id != "announce_analytics":
            assert not task.outlets, f"{task.task_id} emits asset events"
    export = dagbag.dags["analytics_export"]
    assert type(export.timetable).__name__ == "AssetTriggeredTimetable"
    assert {a.uri for a in export.timetable.asset_condition.objects} == uris
    assert type(export.timetable.asset_condition).__name__ == "AssetAny"
    assert export.catchup is False and export.max_active_runs == 1


def test_migration_verify_shape(dagbag) -> None:
    dag = dagbag.dags["migration_verify"]
    assert dag.doc_md and "gate" in dag.doc_md
    assert type(dag.timetable).__name__ == "NullTimetable"  # schedule=None: by hand, per phase
    assert set(dag.tags) >= {"migration"}
    assert set(dag.params.keys()) == {"tables", "phase", "required_clean_runs"}
    assert set(dag.task_ids) == {
        "plan",
        "backfill",
        "verify",
        "gate",
    }
    assert "verify" in dag.get_task("backfill").downstream_task_ids
    assert "gate" in dag.get_task("verify").downstream_task_ids
    for task in dag.tasks:
        assert task.owner == "data-platform"
        assert task.on_failure_callback, f"{task.task_id} has no failure alert"


def test_migration_verify_writes_only_to_its_fixed_connections() -> None:
    """A trigger cannot point the DAG's writes at another connection: no connection
    params, and a conf naming one fails the run before anything connects."""
    import importlib.util

    from airflow.sdk.exceptions import AirflowFailException

    spec = importlib.util.spec_from_file_location("mv", ROOT / "dags" / "migration_verify.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.refuse_connection_params({"phase": 3, "tables": []})
    for conf in ({"new_conn_id": "warehouse_prod"}, {"old_conn_id": "x", "phase": 2}):
        with pytest.raises(AirflowFailException, match="connections are fixed"):
            module.refuse_connection_params(conf)
