"""
### nightly_sales

The nightly batch for one **business day** (the day before the run, in `REPORT_TZ`):

1. `extract_source_db`: what changed in the operational tables since the last load
   (`source_db`, or `source_db_replica` when its lag is acceptable) → landing Parquet,
   one consistent snapshot.
2. `load_source_db`: Great Expectations checks on the landed files, then a private
   build copy of the warehouse; merge into its current-state `raw` tables, apply
   deletes, record the restated business days and the watermarks (one transaction).
3. `extract_payments_api`, at the same time as 1-2 (another system; it needs nothing
   from them): payments (`payments_api`) → landing Parquet; bad records → quarantine.
4. `load_payments_api`: the FX rates of every business day with orders in the build
   (mostly cached), checks, then merge payments and FX rates into the build.
5. `dbt_build`: staging → marts → `analytics.sales_summary`, every dbt test (ELT path).
6. `transform_daily_sales`: pandas over `raw` → checked → `analytics.daily_sales` (ETL).
7. `check_parity`: both tables agree per (date, region), or the run fails.
8. `publish`: the build replaces the published warehouse in one atomic rename.
   Any failure before this leaves what analysts see exactly as it was.
   The run's metrics go into `ops.pipeline_runs` / `ops.task_metrics` with it.
   `announce_analytics` then emits the Airflow Assets of `analytics.sales_summary` and
   `analytics.daily_sales` (they schedule `analytics_export`) when the publish changed
   the rows of either; when it changed neither, it is skipped, with no asset event.
9. `build_report`: the HTML report of the day, `data/report/<day>.html`.
10. `check_alerts`: the alert rules (`config/alerts.yml`) on the run's metrics.
11. `apply_retention`: prune old landing runs, quarantine files, run folders, failed
    builds, report pages and warehouse versions (`config/retention.yml`).

Failures and retries are sent to the alert sinks (task log; a Slack-compatible
webhook when the `alerts_webhook` connection is set), each with a link to the run in the
Airflow UI; a failed run also goes through the alert rules (a failed quality gate fires
`quality`; `alerting.runs`), and so is a run still going
`run_deadline.max_minutes` (config/alerts.yml) after it was queued (a DeadlineAlert;
not under `airflow dags test`, see `alerting.callbacks.run_deadline`).

Run one day by hand: `make nightly DATE=YYYY-MM-DD` (`FULL=1`: full rebuild). The
business day can also be forced with the `business_date` param when triggering from
the UI, a full rebuild asked for with `full_refresh`, and a load that the mass-delete
guard stopped let through with `allow_mass_delete` (config/guards.yml), and schema
drift that is not a lossless widening landed with `accept_schema_drift`
(`<table>.<column>,...`, as `ACCEPT_SCHEMA_DRIFT`).

A run for day D publishes every day up to its **horizon**, the later of D and the last
day already published, each recomputed from the source as the run read it: a backfill
or rerun of an earlier day never removes a published day.
Tasks that write the DuckDB file share the one-slot pool `warehouse_writer`.

One run at a time, whatever the scheduler does: every task works under the run's
**warehouse lease** (`<warehouse>.lease`, warehouse/lease.py), taken by the first task,
renewed while tasks run, given up by the teardown `release_warehouse`; another run waits
`WAREHOUSE_LEASE_WAIT_S` then fails naming the holder. Deterministic errors (quality
gates, contracts, config, schema drift, the mass-delete guard, a publish conflict) fail
a task without retries (pipeline/task_run.py).
"""

from __future__ import annotations

import functools
from datetime import timedelta

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task, teardown

from alerting.callbacks import on_dag_failure, on_task_failure, on_task_retry, run_deadline
from core.business_day import business_date_for
from core.settings import env, task_timeout_minutes
from pipeline.assets import ANALYTICS_ASSETS

REPORT_TZ = env("REPORT_TZ", "UTC")
WAREHOUSE_POOL = "warehouse_writer"

default_args = {
    "owner": "data-platform",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    # A hung task must end (and be retried where it has retries): with max_active_runs=1
    # it would otherwise hold every later night. TASK_TIMEOUT_MINUTES, read at parse time.
    "execution_timeout": timedelta(minutes=task_timeout_minutes()),
    "on_failure_callback": on_task_failure,
    "on_retry_callback": on_task_retry,
}


def _param(name: str) -> bool:
    """A boolean param of the run (`full_refresh`, `allow_mass_delete`)."""
    return bool((get_current_context().get("params") or {}).get(name))


def _guarded(fn):
    """The task runs under the run's warehouse lease, and a deterministic error fails it
    without retries (pipeline/task_run.py)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from pipeline.task_run import run_guarded

        return run_guarded(fn, *args, **kwargs)

    return run


def _text_param(name: str) -> str:
    """A text param of the run (`accept_schema_drift`), "" when unset."""
    return str((get_current_context().get("params") or {}).get(name) or "")


def _business_date():
    """The business day of the current run (param override, else the day before)."""
    ctx = get_current_context()
    override = (ctx.get("params") or {}).get("business_date")
    dag_run = ctx["dag_run"]
    when = ctx.get("logical_date") or dag_run.run_after
    return business_date_for(when, override or None)


@dag(
    schedule=CronTriggerTimetable("0 2 * * *", timezone=REPORT_TZ),
    start_date=pendulum.datetime(2026, 1, 1, tz=REPORT_TZ),
    catchup=False,
    max_active_runs=1,
    deadline=run_deadline(),
    on_failure_callback=on_dag_failure,  # + the alert rules on the failed run
    doc_md=__doc__,
    default_args=default_args,
    tags=["nightly", "sales", "etl", "elt"],
    params={
        "business_date": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Business day to build (YYYY-MM-DD); default: the day before the run.",
        ),
        "full_refresh": Param(
            False,
            type="boolean",
            description="Read the source in full and rebuild every published day "
            "(make nightly FULL=1).",
        ),
        "allow_mass_delete": Param(
            False,
            type="boolean",
            description="Let this run delete more of a table than config/guards.yml allows "
            "(recorded in ops.guard_overrides; make nightly ALLOW_MASS_DELETE=1).",
        ),
        "accept_schema_drift": Param(
            "",
            type=["null", "string"],
            description="Land this run's schema drift (a dropped column, a type change that "
            "is not a lossless widening) for these columns: <table>.<column>[,...] "
            "(recorded in ops.guard_overrides; make nightly ACCEPT_SCHEMA_DRIFT=...).",
        ),
    },
)
def nightly_sales():
    @task
    @_guarded
    def extract_source_db() -> dict:
        from pipeline import nightly

        return nightly.extract_source_db(
            _business_date(), _param("full_refresh"), _text_param("accept_schema_drift")
        )

    @task(pool=WAREHOUSE_POOL, retries=0)
    @_guarded
    def load_source_db() -> dict:
        from pipeline import nightly

        return nightly.load_source_db(_business_date(), _param("allow_mass_delete"))

    @task
    @_guarded
    def extract_payments_api() -> dict:
        from pipeline import nightly

        return nightly.extract_payments_api(_business_date(), _text_param("accept_schema_drift"))

    # retried like the extracts: it fetches the FX rates of the build's days from the API
    # first (its merges into the run's private build are idempotent)
    @task(pool=WAREHOUSE_POOL)
    @_guarded
    def load_payments_api() -> dict:
        from pipeline import nightly

        return nightly.load_payments_api(_business_date(), _text_param("accept_schema_drift"))

    @task(pool=WAREHOUSE_POOL, retries=0)
    @_guarded
    def dbt_build() -> dict:
        from pipeline import nightly

        return nightly.dbt_build(_business_date())

    @task(pool=WAREHOUSE_POOL, retries=0)
    @_guarded
    def transform_daily_sales() -> dict:
        from pipeline import nightly

        return nightly.transform_daily_sales(_business_date())

    @task(retries=0)
    @_guarded
    def check_parity() -> dict:
        from pipeline import nightly

        return nightly.check_parity(_business_date())

    @task(pool=WAREHOUSE_POOL, retries=0)
    @_guarded
    def publish(
        extracted: dict, loaded: dict, api: dict, api_loaded: dict, etl: dict, parity: dict
    ) -> dict:
        from pipeline import nightly

        business_date = _business_date()
        steps = nightly.NightSteps(extracted, loaded, api, api_loaded, etl, parity)
        stats = nightly.run_stats(business_date, steps)
        published = nightly.publish(business_date, stats)
        # for announce_analytics: the analytics tables this publish changed
        get_current_context()["ti"].xcom_push("changed_tables", published["changed_tables"])
        return stats

    @task(retries=0, outlets=list(ANALYTICS_ASSETS))
    def announce_analytics(stats: dict) -> dict:
        """The Asset events of `analytics.*` (they schedule `analytics_export`) when the
        publish changed either table (Airflow emits every outlet of a task that succeeds);
        skipped, with no event, when it changed neither."""
        from airflow.sdk.exceptions import AirflowSkipException

        from pipeline.assets import published_change

        ctx = get_current_context()
        changed = ctx["ti"].xcom_pull(task_ids="publish", key="changed_tables") or []
        if not changed:
            raise AirflowSkipException(
                f"run {stats.get('run_id')} published the analytics tables unchanged: "
                "no asset event, analytics_export is not triggered"
            )
        extra = published_change(changed, stats)
        for asset in ANALYTICS_ASSETS:
            ctx["outlet_events"][asset].extra = extra
        return extra

    @task(retries=0)
    @_guarded
    def build_report(stats: dict) -> str:
        from pipeline import nightly

        return nightly.build_report(_business_date(), stats)

    @task(retries=0)
    @_guarded
    def check_alerts() -> dict:
        from pipeline import nightly

        return nightly.check_alerts(_business_date())

    @task(retries=0)
    @_guarded
    def apply_retention() -> dict:
        from pipeline import nightly

        return nightly.apply_retention(_business_date())

    @teardown
    def release_warehouse() -> str:
        from pipeline.task_run import release_run_lease

        return release_run_lease()

    extracted = extract_source_db()
    loaded = load_source_db()
    api = extract_payments_api()
    api_loaded = load_payments_api()
    built = dbt_build()
    etl = transform_daily_sales()
    parity = check_parity()
    # the two extracts read different systems and write no warehouse: they run at once;
    # the loads and everything after them take the warehouse_writer pool
    extracted >> loaded
    [loaded, api] >> api_loaded >> built >> etl >> parity
    stats = publish(extracted, loaded, api, api_loaded, etl, parity)
    announced = announce_analytics(stats)  # beside the report: nothing waits for it
    report, alerts, retained = build_report(stats), check_alerts(), apply_retention()
    report >> alerts >> retained
    # the run's warehouse lease is given up when every task is done, failed or not
    every = [extracted, loaded, api, api_loaded, built, etl, parity, stats, report, alerts]
    every + [retained, announced] >> release_warehouse()


nightly_sales()
