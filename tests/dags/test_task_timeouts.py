"""Every task of every DAG has an `execution_timeout` (TASK_TIMEOUT_MINUTES): a hung task
ends, and with `max_active_runs=1` it cannot hold every later run."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from core.settings import task_timeout_minutes

ROOT = Path(__file__).resolve().parents[2]


def _dagbag(tmp_path: Path):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path / "airflow"))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


def test_every_task_of_every_dag_has_an_execution_timeout(tmp_path: Path) -> None:
    bag = _dagbag(tmp_path)
    assert {"nightly_sales", "migration_verify"} <= set(bag.dags)
    want = timedelta(minutes=task_timeout_minutes())
    for dag_id, dag in bag.dags.items():
        for task in dag.tasks:
            assert task.execution_timeout is not None, f"{dag_id}.{task.task_id}: no timeout"
            assert task.execution_timeout == want, (dag_id, task.task_id, task.execution_timeout)


def test_task_timeout_minutes_is_read_when_the_dags_are_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASK_TIMEOUT_MINUTES", "7")
    bag = _dagbag(tmp_path)
    timeouts = {t.execution_timeout for dag in bag.dags.values() for t in dag.tasks}
    assert timeouts == {timedelta(minutes=7)}
