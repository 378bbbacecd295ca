"""
### analytics_export

Exports the published `analytics.sales_summary` and `analytics.daily_sales` as Parquet
files, `data/exports/analytics/<table>.parquet` (+ `manifest.json`: rows per table and
the nightly run that published them), for readers that do not query the warehouse.

Scheduled on the **Airflow Assets** of those tables (`x-nightshift://warehouse/analytics/
<table>`, pipeline/assets.py): it runs after each `nightly_sales` run whose publish
changed their rows, and not after a run that published them unchanged (its
`announce_analytics` task is skipped and emits no asset event). It can also be
triggered by hand.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, get_current_context, task

from alerting.callbacks import on_dag_failure, on_task_failure
from core.settings import task_timeout_minutes
from pipeline.assets import ANALYTICS_ASSETS

default_args = {
    "owner": "data-platform",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "execution_timeout": timedelta(minutes=task_timeout_minutes()),  # read at parse time
    "on_failure_callback": on_task_failure,
}


def _triggering_run_id() -> str | None:
    """The nightly run named by the asset events that queued this run (None by hand)."""
    events = get_current_context().get("triggering_asset_events") or {}
    extras = [getattr(e, "extra", None) or {} for evs in events.values() for e in evs]
    run_ids = [str(x["run_id"]) for x in extras if x.get("run_id")]
    return max(run_ids) if run_ids else None


@dag(
    schedule=ANALYTICS_ASSETS[0] | ANALYTICS_ASSETS[1],  # emitted together
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    on_failure_callback=on_dag_failure,
    doc_md=__doc__,
    default_args=default_args,
    tags=["analytics", "export"],
)
def analytics_export():
    @task
    def export_tables() -> dict:
        from core import settings
        from warehouse.export import export_analytics

        return export_analytics(
            settings.warehouse(),
            settings.data_dir() / "exports" / "analytics",
            run_id=_triggering_run_id(),
        )

    export_tables()


analytics_export()
