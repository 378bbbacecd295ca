"""Both DAGs send their failures to the alert sinks: the DAG-level `on_failure_callback`
(the run failed; for nightly_sales also the alert rules on the failed run) and the
task-level one (tests/alerting/test_alerts_airflow.py runs them for real)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alerting.callbacks import on_dag_failure, on_task_failure

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.mark.parametrize("dag_id", ["nightly_sales", "migration_verify", "analytics_export"])
def test_the_dag_and_its_tasks_alert_on_failure(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    callbacks = dag.on_failure_callback
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    assert on_dag_failure in callbacks
    for task in dag.tasks:
        if task.is_teardown:
            continue
        task_callbacks = task.on_failure_callback
        task_callbacks = task_callbacks if isinstance(task_callbacks, list) else [task_callbacks]
        assert on_task_failure in task_callbacks, task.task_id
