"""
### migration_verify

One step of the operational database's move to a new PostgreSQL schema
(docs/migration-runbook.md). Triggered by hand (`schedule=None`) with the **phase**
about to start:

1. `plan`: the tables of `config/migration.yml` to work on (`tables` param, or all).
2. `backfill` (phases 2 and 3; skipped in the others): replay the repair log, then copy
   history old → new from each table's checkpoint (resumable, idempotent).
3. `verify` (one mapped task per table; skipped in phase 1): counts and bucket checksums in both
   databases, bisection down to the rows; each result goes to `ops.migration_checks`
   in the new database.
4. `gate`: the go/no-go decision of the phase, recorded in `ops.migration_gates`;
   the task fails naming the gate and why (phase 4 needs `required_clean_runs`
   consecutive clean verifications per table and an empty repair log).

Connections: `source_db` (the old database) and `migration_target_db` (the new one,
the only one it writes to besides the old one's repair log), as `AIRFLOW_CONN_<ID>` or
Airflow connections. They are fixed: a trigger cannot name another connection (whoever
may trigger a DAG could otherwise point its writes at any connection Airflow holds); a
run whose conf names one (`old_conn_id`, `new_conn_id`, …) fails before it connects.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from alerting.callbacks import on_dag_failure, on_task_failure
from core.settings import task_timeout_minutes

# No retries: a gate that says no must be looked at, not retried. A hung task still
# ends: every task has TASK_TIMEOUT_MINUTES (read at parse time) as its execution_timeout.
default_args = {
    "owner": "data-platform",
    "retries": 0,
    "on_failure_callback": on_task_failure,
    "execution_timeout": timedelta(minutes=task_timeout_minutes()),
}


def refuse_connection_params(conf: dict) -> None:
    """A trigger's conf or params naming a connection fail the run (not retried)."""
    named = sorted(k for k in conf if "conn" in str(k).lower())
    if named:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(
            f"migration_verify: {', '.join(named)} given when triggering: the connections "
            "are fixed (source_db: old, migration_target_db: new); set those connections "
            "instead of naming others"
        )


def _params() -> dict:
    ctx = get_current_context()
    params = dict(ctx["params"])
    refuse_connection_params({**params, **(getattr(ctx["dag_run"], "conf", None) or {})})
    from migrate.tasks import NEW_CONN_ID, OLD_CONN_ID

    return {**params, "old_conn_id": OLD_CONN_ID, "new_conn_id": NEW_CONN_ID}


def _run_id() -> str:
    return str(get_current_context()["dag_run"].run_id)


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    on_failure_callback=on_dag_failure,
    doc_md=__doc__,
    default_args=default_args,
    tags=["migration", "verification"],
    params={
        "phase": Param(
            3, type="integer", minimum=1, maximum=5, description="Phase to start (1-5)."
        ),
        "tables": Param(
            [], type="array", description="Mapping names of config/migration.yml; empty: all."
        ),
        "required_clean_runs": Param(
            3, type="integer", minimum=1, description="Clean verifications in a row for phase 4."
        ),
    },
)
def migration_verify():
    @task
    def plan() -> list[str]:
        from migrate.tasks import table_names

        return table_names(_params()["tables"])  # _params refuses a conf naming a connection

    @task
    def backfill(tables: list[str]) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from migrate.tasks import BACKFILL_PHASES
        from migrate.tasks import backfill as run

        p = _params()
        if int(p["phase"]) not in BACKFILL_PHASES:  # shown skipped, not done
            raise AirflowSkipException(
                f"no backfill in phase {p['phase']}: history is copied in phases "
                f"{' and '.join(map(str, BACKFILL_PHASES))}"
            )
        return run(p["old_conn_id"], p["new_conn_id"], tables, progress_bar=False)

    # runs after a skipped backfill (phases 1, 4, 5), not after a failed one
    @task(trigger_rule="none_failed")
    def verify(table: str) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from migrate.tasks import verify as run

        p = _params()
        if int(p["phase"]) == 1:
            raise AirflowSkipException("no verification in phase 1: dual writes just began")
        return run(
            p["old_conn_id"], p["new_conn_id"], table, phase=int(p["phase"]), run_id=_run_id()
        )

    @task(trigger_rule="none_failed")  # phase 1: every verify is skipped, the gate decides
    def gate(tables: list[str], results: list[dict]) -> dict:
        from migrate.tasks import GatePlan
        from migrate.tasks import gate as run

        p = _params()
        unclean = [r["table"] for r in results if r["clean"] is False]
        how = GatePlan(run_id=_run_id(), required_clean_runs=int(p["required_clean_runs"]))
        decision = run(p["old_conn_id"], p["new_conn_id"], int(p["phase"]), tables, how)
        return {**decision, "unclean_tables": unclean}

    tables = plan()
    copied = backfill(tables)
    results = verify.expand(table=tables)
    copied >> results
    gate(tables, results)


migration_verify()
