"""What every `nightly_sales` task runs inside (`dags/nightly_sales.py`, `_guarded`).

1. **The warehouse lease** (warehouse/lease.py): the task takes its dag run's lease, or
   takes it again (a retry, a clear), waiting up to `WAREHOUSE_LEASE_WAIT_S` for
   another run's, and renews it while it runs; the DAG's teardown task
   `release_warehouse` gives it up when the run ends, failed or not. Under `airflow dags
   test` (`make nightly`, `make demo`, the local `make backfill`) the calling command
   holds the lease for the whole run and names it in `NIGHTSHIFT_WAREHOUSE_LEASE_HOLDER`:
   the tasks work under it and leave releasing it to that command.
2. **No retries for deterministic errors**: a failed quality gate, a contract or config
   error, schema drift, the mass-delete guard, a publish conflict give the same answer
   on every try; the task fails at once (AirflowFailException) instead of spending
   minutes of backoff. Transient errors (connections, timeouts, a busy warehouse) keep
   the task's retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from core import settings
from core.business_day import business_date_for
from warehouse import lease

log = logging.getLogger(__name__)

HOLDER_ENV = "NIGHTSHIFT_WAREHOUSE_LEASE_HOLDER"
RUN_ENV = "NIGHTSHIFT_WAREHOUSE_LEASE_RUN"

#: Errors whose retry cannot change the answer (module.qualname, matched on the MRO,
#: so a subclass counts; nothing is imported to check).
DETERMINISTIC = frozenset(
    {
        "core.settings.ConfigError",
        "extract.api_client.ApiContractError",
        "extract.api_extract.QuarantineThresholdError",
        "extract.api_extract.WatermarkJumpError",
        "extract.landing.SchemaDriftError",
        "extract.landing.UnlandableValueError",
        "extract.db_extract.SchemaError",
        # source rows stamped after the source's clock: fixed at the source, not by a retry
        "extract.db_extract.FutureCursorError",
        "extract.tables.TableConfigError",
        "extract.shards.ShardMapError",
        "quality.validate.QualityGateError",
        "quality.reconcile.ReconciliationError",
        "quality.parity.ParityError",
        "transform.daily_sales.MissingFxRateError",
        "warehouse.guards.MassDeleteError",
        "warehouse.load.LoadError",
        "warehouse.dbt_runner.DbtError",
        # another run published meanwhile: a rerun of the day resolves it, a retry of the
        # publish alone would only fail the same way
        "warehouse.publish.PublishConflictError",
        # the run's lease was taken over: its build may be gone; rerun the day
        "warehouse.lease.LeaseLostError",
    }
)


def is_deterministic(exc: BaseException) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" in DETERMINISTIC for c in type(exc).__mro__)


def fail_without_retry(exc: BaseException) -> BaseException:
    """The error as Airflow's no-retry failure (AirflowFailException); without Airflow,
    the error itself (nothing retries it anyway)."""
    try:
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:  # no Airflow: nothing retries anyway
        return exc
    return AirflowFailException(f"{type(exc).__name__} (not retried): {exc}")


def _identity() -> tuple[str, str, bool]:
    """(lease holder, the run for people, inherited from the calling command)."""
    from airflow.sdk import get_current_context  # inside a task only: Airflow is loaded

    ctx = get_current_context()
    dag_run = ctx["dag_run"]
    ti = ctx.get("ti")
    override = (ctx.get("params") or {}).get("business_date")
    try:
        day = business_date_for(ctx.get("logical_date") or dag_run.run_after, override or None)
    except Exception:  # the step itself reports a bad day
        day = override
    where = f"dag run {dag_run.run_id}"
    if ti is not None:
        where += f", task {ti.task_id} try {ti.try_number}"
    run = f"{dag_run.dag_id} {day} ({where})"
    inherited = settings.env(HOLDER_ENV)
    if inherited:
        return inherited, f"{settings.env(RUN_ENV, inherited)}; {run}", True
    return f"{dag_run.dag_id}/{dag_run.run_id}", run, False


def _renewed(warehouse: Any, holder: str, ttl: float) -> bool:
    try:
        lease.renew(warehouse, holder, ttl)
    except lease.LeaseLostError:
        return False
    return True


def run_guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one task's step under the run's warehouse lease; deterministic errors fail
    the task without retries."""
    try:
        holder, run, inherited = _identity()
        warehouse = settings.warehouse_lease_target()
        ttl = settings.warehouse_lease_ttl_seconds()
        # the calling command's lease is renewed (it stays the one named), else taken
        if not (inherited and _renewed(warehouse, holder, ttl)):
            lease.acquire(
                warehouse, holder, run, ttl_s=ttl, wait_s=settings.warehouse_lease_wait_seconds()
            )
        with lease.heartbeat(warehouse, holder, ttl):
            return fn(*args, **kwargs)
    except Exception as exc:
        if is_deterministic(exc):
            log.error("%s: a deterministic error, the task is not retried", type(exc).__name__)
            failed = fail_without_retry(exc)
            if failed is not exc:
                raise failed from exc
        raise


def release_run_lease() -> str:
    """The DAG's teardown: give the run's lease up (kept when the calling command holds
    it, or when another run's lease is in force)."""
    holder, _, inherited = _identity()
    if inherited:
        return f"lease held by the calling command ({holder}): it releases it"
    released = lease.release(settings.warehouse_lease_target(), holder)
    return f"released {holder}" if released else f"{holder} held no lease"
