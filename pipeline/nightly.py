"""The nightly pipeline's steps, callable from the Airflow DAG or from the command line.

Each step takes the business day, resolves its configuration at the edge (settings),
does one transactional piece of work and returns a small JSON-able summary. The DAG
(`dags/nightly_sales.py`) only wires these together.

    python -m pipeline.nightly --date 2026-11-27      # all steps, without Airflow
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from alerting.rules import load_thresholds
from alerting.runs import published_run_alerts
from core import clock, run_files, settings
from core import tables as source_tables
from core.business_day import business_date_for, run_id_for
from core.files import write_atomic
from extract import key_check
from extract.api_client import ApiContractError, PaymentsApiClient
from extract.api_extract import (
    FxPlan,
    PaymentsPlan,
    QuarantineThresholdError,
    WatermarkJumpError,
    extract_fx_rates,
    extract_payments,
)
from extract.db_extract import (
    ExtractPlan,
    FutureCursorError,
    ShardReadPolicy,
    extract_sharded_source,
    extract_tables,
    read_shard_run_record,
    shard_run_record_path,
)
from extract.landing import read_manifest
from extract.object_landing import pull_mirror, push_mirror
from extract.replay import open_replays
from extract.replica import NO_REPLICA, ReadChoice, choose_read_url
from extract.shards import ShardMap
from extract.source_identity import SourceCheck
from extract.tables import TableConfig, load_table_configs
from extract.watermark import last_watermark
from pipeline import retention, run_metrics
from pipeline.run_metrics import timed
from pipeline.task_run import fail_without_retry
from quality.freshness import freshness_results
from quality.parity import check_sales_parity
from quality.reconcile import (
    SourceTotals,
    check_source_totals,
    clear_source_totals,
    raise_for_source_mismatch,
    reconcile_run,
    source_totals_path,
    write_source_totals,
)
from quality.results import (
    build_data_docs,
    dbt_test_results,
    record_failed_gate,
    store_results,
)
from quality.validate import raise_for_critical, validate_frame, validate_landed_table
from report.build import build_report as render_report
from transform import daily_sales
from warehouse import dbt_runner, lease
from warehouse import load as warehouse_load
from warehouse.backends.base import BuildNotFoundError
from warehouse.export import changed_analytics_tables
from warehouse.guards import MassDeleteGuard
from warehouse.publish import last_published_day

__all__ = ["business_date_for", "run_id_for"]  # re-exported: what callers name a run by

log = logging.getLogger(__name__)

DB_TABLES = source_tables.SOURCES[source_tables.SOURCE_DB]


def _warehouse() -> Any:
    """The configured warehouse (warehouse/backends): DuckDB at WAREHOUSE_PATH by default."""
    return settings.warehouse()


def _published() -> Any:
    """The published warehouse for readers: the DuckDB file (a path) or the server one."""
    return settings.warehouse_lease_target()


def _run_build(business_date: date) -> tuple[Any, Any]:
    """(warehouse, the run's build): `load_source_db` begins the build, the later tasks
    of the run (other processes) find it again."""
    wh = _warehouse()
    build = wh.open_build(run_id_for(business_date))
    if build is None:
        raise BuildNotFoundError(
            f"run {run_id_for(business_date)}: no build in {wh.describe()}: load_source_db "
            "begins it (run the whole DAG, or `make nightly DATE=…`)"
        )
    return wh, build


def published_horizon(business_date: date, target: tuple[Any, Any] | None = None) -> date:
    """The last business day a run for `business_date` publishes: the later of that day
    and the last day already published (the build's `ops.pipeline_runs` and `analytics`).

    Every day up to it is recomputed from `raw` as this run loaded it, so a backfill or a
    rerun of an earlier day never removes a published day and never leaves the two
    published tables covering different days.
    """
    if target is None:  # callers that hold the run's (warehouse, build) pass it
        wh = _warehouse()
        target = (wh, wh.open_build(run_id_for(business_date)))
    wh, build = target
    last = last_published_day(wh, build=build)
    return business_date if last is None else max(business_date, last)


def _landing_synced(business_date: date, sources: tuple[str, ...] | None = None) -> Path:
    """The landing folder, holding the run's committed landings: with the landing zone
    on object storage (`NIGHTSHIFT_LANDING_URL=s3://…`), the store's committed attempts
    of the run are staged here first and local copies that are not committed removed
    (another host, or a killed writer, may have landed them); locally a no-op.

    `sources`: only those sources' runs (a step reading source_db's landings must not
    remove the stage `extract_payments_api` is writing at the same time)."""
    root = settings.landing_dir()
    store = settings.landing_store()
    if store is not None:
        started = time.monotonic()
        counts = store.sync_run(root, run_id_for(business_date), sources)
        log.info(
            "landing: run %s staged from %s in %.2f s: %s",
            run_id_for(business_date),
            store.describe(),
            time.monotonic() - started,
            counts,
        )
    return root


def _push_landing_side_files() -> None:
    """With the landing zone on object storage: upload the side files an extract wrote
    beside the runs (shard-run records, source totals, the FX cache)."""
    store = settings.landing_store()
    if store is not None:
        log.info(
            "landing: %d side file(s) pushed to %s",
            store.push_side_files(settings.landing_dir()),
            store.describe(),
        )


def _quality_gate(business_date: date, step: str, results: list, warehouse: Any) -> dict:
    """Store GX results in the build, write Data Docs, then stop on a critical failure
    (recording it in the published warehouse first: the build is abandoned)."""
    _store_quality(warehouse, business_date, results)
    try:
        docs = build_data_docs(results, settings.quality_docs_dir() / step)
        log.info("quality: Data Docs for %s at %s", step, docs)
        # with NIGHTSHIFT_DATA_URL, to the store
        run_files.publish_docs(settings.quality_docs_dir() / step, step)
    except Exception:  # the docs are for people; a rendering problem must not gate data
        log.exception("quality: could not build Data Docs for %s", step)
    for result in results:
        log.info("quality: %s", result.summary())
        for outcome in result.warnings:
            log.warning("quality warning: %s", outcome.describe())
    if any(r.critical_failures for r in results):
        summary_page = f"{run_files.docs_location(step)}/quality_summary.html"
        raise_for_critical(results, _record_failed_gate(business_date, results, summary_page))
    return {
        "suites": len(results),
        "warnings": sum(len(r.warnings) for r in results),
    }


def _record_failed_gate(business_date: date, results: list, docs: Path | str | None) -> str:
    """Put a failed gate's results where they outlive the abandoned build: the published
    warehouse's `ops.quality_results` (quality/results.py); return where, for the error."""
    run_id = run_id_for(business_date)
    try:
        stored = record_failed_gate(_published(), run_id, results)
    except Exception:  # never hide the gate's own error behind this one
        log.exception("quality: could not record the failed gate in the published warehouse")
        stored = False
    if not stored:
        return f"details: {docs} (not in ops.quality_results: nothing is published yet)"
    return (
        f"details: ops.quality_results where run_id = '{run_id}' in {_warehouse().describe()}"
        f" (analytics unchanged), and {docs}"
    )


def _validate_landed(business_date: date, source: str, tables: tuple[str, ...]) -> list:
    run_ids = [run_id_for(business_date)]
    if source == "source_db" and settings.shard_map_path() is not None:
        run_ids = _shard_landing_run_ids(business_date)
    return [
        validate_landed_table(settings.landing_dir(), source, table, run_id)
        for run_id in run_ids
        for table in tables
    ]


def _shard_landing_run_ids(business_date: date) -> list[str]:
    """The landing run of every shard of a complete sharded extract of the day (each
    shard's landed part is validated on its own: row count = its manifest, unique keys)."""
    run_id = run_id_for(business_date)
    record = read_shard_run_record(settings.landing_dir(), run_id)
    if record is None:
        raise FileNotFoundError(
            f"source_db run={run_id}: no complete sharded extract "
            f"({shard_run_record_path(settings.landing_dir(), run_id)} is missing): "
            "a shard failed or extract_source_db did not run"
        )
    return [s["landing_run_id"] for s in record["shards"]]


def _refuse_future_day(business_date: date) -> None:
    """A day that has not started cannot be published: it would become the horizon of
    every later night (only `make rollback` undoes a publish). Today is published as it
    stands so far, with a warning: the run after the day ends restates it."""
    today = clock.now().astimezone(settings.report_tz()).date()
    if business_date > today:
        raise settings.ConfigError(
            f"business day {business_date} is after today ({today} in REPORT_TZ="
            f"{settings.report_tz_name()}): check DATE / the business_date param"
        )
    if business_date == today:
        log.warning(
            "business day %s has not ended (REPORT_TZ=%s): its figures are partial, as the "
            "source stands now; a run after the day ends publishes it whole",
            business_date,
            settings.report_tz_name(),
        )


NIGHTLY_BACKENDS = ("duckdb", "postgres", "snowflake")


def _refuse_other_warehouse() -> None:
    """The nightly runs on DuckDB, PostgreSQL and Snowflake warehouses: another configured
    warehouse (`AIRFLOW_CONN_WAREHOUSE`), or a `DBT_TARGET` that disagrees with it, stops the run
    before anything is read, rather than being ignored (docs/warehouse-backends.md)."""
    kind = settings.warehouse_backend()  # ConfigError when DBT_TARGET disagrees
    if kind not in NIGHTLY_BACKENDS:
        raise settings.ConfigError(
            f"the warehouse is configured as {kind} (AIRFLOW_CONN_WAREHOUSE), but the "
            f"nightly runs on {' and '.join(NIGHTLY_BACKENDS)} warehouses only; the {kind} "
            "backend in warehouse/backends/ loads, builds and publishes but is not wired "
            "into the nightly (docs/warehouse-backends.md)"
        )


def _read_choice() -> Any:
    """Primary or replica (an `extract.replica.ReadChoice`, whose lag the extract takes off
    the recorded window end): the replica only when configured and not lagging too far."""
    primary = settings.get_connection_uri(settings.SOURCE_DB_CONN_ID)
    replica = settings.get_connection_uri(settings.SOURCE_DB_REPLICA_CONN_ID, required=False)
    if not replica:
        return ReadChoice(primary, False, None, NO_REPLICA)
    choice = choose_read_url(
        primary,
        replica,
        max_lag_seconds=settings.replica_max_lag_seconds(),
        on_lag=settings.replica_on_lag(),
    )
    log.info("source read: %s", choice.reason)
    return choice


@timed
def extract_source_db(
    business_date: date, full_refresh: bool = False, accept_schema_drift: str | None = None
) -> dict[str, Any]:
    """Incremental extract of the operational tables (primary, or the replica when set).

    Schema drift a landing refuses (extract/landing.py) is let through for the columns of
    `ACCEPT_SCHEMA_DRIFT` / the DAG param `accept_schema_drift` (`<table>.<column>,...`).

    With `SOURCE_DB_SHARD_MAP`, every physical shard of the map is extracted in parallel
    (docs/sharding.md); the map is read once, here, for the whole run. `full_refresh`
    (`make nightly FULL=1`, the DAG param) reads every table in full and records it in
    the run's manifests: the later steps then rebuild the marts and daily_sales in full.
    """
    _refuse_future_day(business_date)
    _refuse_other_warehouse()
    configs = load_table_configs(settings.extract_config_path())
    map_path = settings.shard_map_path()
    if map_path is not None:
        if full_refresh:
            raise settings.ConfigError(
                "full_refresh is not available for a sharded source (SOURCE_DB_SHARD_MAP): "
                "set every table's mode to full in EXTRACT_CONFIG for one run instead"
            )
        return _extract_sharded(
            business_date, map_path, configs, settings.accept_schema_drift(accept_schema_drift)
        )

    requests = _pull_key_set_requests(configs)
    try:
        return _extract_unsharded(business_date, configs, full_refresh, accept_schema_drift)
    finally:
        _forget_met_key_set_requests(requests)


def _extract_unsharded(
    business_date: date,
    configs: list[TableConfig],
    full_refresh: bool,
    accept_schema_drift: str | None,
) -> dict[str, Any]:
    """`extract_source_db` of an unsharded source: its rows landed per table."""
    choice = _read_choice()
    extras: dict[str, Any] = {}
    if full_refresh:
        log.warning("full rebuild requested: every source table is read in full")
        configs = [dataclasses.replace(c, mode="full") for c in configs]
        extras["full_refresh"] = True
    # The source's identity, and whether it is another database than the one the
    # warehouse was built from or one restored to an earlier state (its watermarks then
    # mean nothing): decided in the extract's connection (extract/source_identity.py).
    check = SourceCheck(_primary_url(), _published(), reading_replica=choice.used_replica)
    totals = _source_totals(business_date)
    manifests = _no_retry_on_bad_records(
        extract_tables,
        choice.url,
        ExtractPlan(
            run_id=run_id_for(business_date),
            landing_root=settings.landing_dir(),
            warehouse_path=_published(),
            configs=configs,
            manifest_extras=extras,
            read_choice=choice,
            parallelism=settings.extract_parallelism(),
            aggregates=totals,
            accept_drift=settings.accept_schema_drift(accept_schema_drift),
            source_check=check,
        ),
    )
    _record_source_totals(business_date, totals)
    return {name: m["rows"] for name, m in manifests.items()}


def _source_totals(business_date: date) -> Any:
    """Per-day source totals taken in the extract's own snapshot (quality/reconcile.py);
    an earlier attempt's record of the run is removed first."""
    clear_source_totals(settings.landing_dir(), run_id_for(business_date))
    _forget_landing_side_file(source_totals_path(settings.landing_dir(), run_id_for(business_date)))
    return SourceTotals(settings.report_tz_name())


def _pull_key_set_requests(configs: list[TableConfig]) -> list[Path]:
    """With the landing zone on object storage: stage the loaders' requests for a full key
    set (extract/key_check.py) before the extract reads them. A load that could not check
    a table's deletes writes one and pushes it (`load_source_db`); the next extract may run
    on another host. Returns the requests staged here."""
    store = settings.landing_store()
    if store is None:
        return []
    root = settings.landing_dir()
    staged = []
    for config in configs:
        path = key_check.request_path(root, config.name)
        data = store.get_object(path.relative_to(root).as_posix())
        if data is None:  # met on another host (a load pushes its request when it writes it)
            path.unlink(missing_ok=True)
            continue
        write_atomic(path, data)
        staged.append(path)
    return staged


def _forget_met_key_set_requests(staged: list[Path]) -> None:
    """The requests the extract met (it removes them once the full key set has landed)
    go from the store too, or every later extract would read every key again."""
    for path in staged:
        if not path.exists():
            _forget_landing_side_file(path)


def _forget_landing_side_file(path: Path) -> None:
    """With the landing zone on object storage, an extract starting over removes its
    earlier record of the run from the store too, as it does on disk."""
    store = settings.landing_store()
    if store is not None:
        store.delete_side_file(path.relative_to(settings.landing_dir()).as_posix())


def _record_source_totals(business_date: date, totals: Any) -> None:
    path = write_source_totals(settings.landing_dir(), run_id_for(business_date), totals)
    _push_landing_side_files()
    for table, why in totals.unchecked.items():
        log.warning("source -> landing reconciliation of %s not available (%s)", table, why)
    log.info("source totals of the extract's snapshot: %s", path)


def _primary_url() -> str:
    """The primary's URL: its password-less form is the fallback identity of the source."""
    return settings.sqlalchemy_url(settings.get_connection_uri(settings.SOURCE_DB_CONN_ID))


def _extract_sharded(
    business_date: date, map_path: Path, configs, accept_drift: tuple[str, ...] = ()
) -> dict[str, Any]:
    shard_map = ShardMap.load(map_path)
    if settings.get_connection_uri(settings.SOURCE_DB_REPLICA_CONN_ID, required=False):
        log.warning(
            "%s is set but the source is sharded (%s): it is not used; give each shard "
            "its replica_url/replica_conn_id in the map instead (docs/sharding.md)",
            settings.SOURCE_DB_REPLICA_CONN_ID,
            map_path,
        )
    log.info(
        "sharded source: map %s version %d, %d shard(s)",
        map_path,
        shard_map.version,
        len(shard_map.shards),
    )
    totals = _source_totals(business_date)
    _forget_landing_side_file(
        shard_run_record_path(settings.landing_dir(), run_id_for(business_date))
    )
    result = extract_sharded_source(
        shard_map,
        ExtractPlan(
            run_id=run_id_for(business_date),
            landing_root=settings.landing_dir(),
            warehouse_path=_published(),
            configs=configs,
            parallelism=settings.extract_parallelism(),
            aggregates=totals,
            accept_drift=accept_drift,
        ),
        ShardReadPolicy(
            max_workers=settings.shard_max_workers(),
            replica_max_lag_seconds=settings.replica_max_lag_seconds(),
            replica_on_lag=settings.replica_on_lag(),
        ),
    )
    _record_source_totals(business_date, totals)
    return result["rows"]


@timed
def load_source_db(business_date: date, allow_mass_delete: bool = False) -> dict[str, Any]:
    """Quality-gate the landed deltas, then merge them into the build's `raw.*`.

    The build is a fresh copy of the published warehouse; nothing is published until
    every later check has passed (`publish`). A merge whose key sets would delete too
    much of a table stops first (warehouse/guards.py) unless `allow_mass_delete`.
    """
    load = warehouse_load.load_source_db
    if settings.shard_map_path() is not None:
        load = warehouse_load.load_source_db_sharded  # every shard of the run, in one transaction
    _landing_synced(business_date, ("source_db",))  # the payments extract may be writing
    results = _validate_landed(business_date, "source_db", DB_TABLES)
    wh = _warehouse()
    build = wh.begin_build(run_id_for(business_date))
    quality = _quality_gate(business_date, "source_db", results, (wh, build))
    _reconcile_source(business_date, (wh, build))
    plan = warehouse_load.SourceLoadPlan(
        run_id_for(business_date),
        settings.report_tz_name(),
        guard=MassDeleteGuard.load(settings.guards_config_path()),
        allow_mass_delete=allow_mass_delete,
        warehouse=wh,
        build=build,
        ops_history_days=_retention_policy().ops_history_days,
    )
    try:
        result = load(settings.landing_dir(), plan)
    except warehouse_load.LoadError:
        _push_landing_side_files()  # a request for a full key set reaches the extract's host
        raise
    reconciled = _reconcile(business_date, "source_db", (wh, build))
    return {
        "rows": result["rows"],
        "deleted": result["deleted"],
        "restated_days": result["restated_days"],
        "quality": quality,
        "reconciled": reconciled,
    }


def _reconcile_source(business_date: date, target: tuple[Any, Any]) -> None:
    """Source → landing: the landed rows equal what the source held in the extract's
    snapshot, per table and business day; stored in `ops.quality_results`, then enforced."""
    run_id = run_id_for(business_date)
    result = check_source_totals(settings.landing_dir(), run_id)
    if result is None:
        log.warning("run %s recorded no source totals: source -> landing not reconciled", run_id)
        return
    _store_quality(target, business_date, [result])
    log.info("quality: %s", result.summary())
    raise_for_source_mismatch(result)


def _reconcile(business_date: date, source: str, target: tuple[Any, Any]) -> dict[str, int]:
    """Landed rows == their merged copies in the build, per business day (quality/reconcile.py)."""
    wh, build = target
    with wh.transaction(build) as session:
        return reconcile_run(
            session,
            settings.landing_dir(),
            source,
            run_id_for(business_date),
            settings.report_tz_name(),
        )


def fx_days_needed(business_date: date, horizon: date) -> list[date]:
    """Business days (in REPORT_TZ) up to the run's published horizon with an order in the
    build's `raw.orders`: every day a published row can come from, restated days included."""
    wh, build = _run_build(business_date)
    days = wh.read_arrow(
        "select distinct cast(timezone(?, created_at) as date) as d from {raw}.orders "
        "where created_at is not null order by d",
        [settings.report_tz_name()],
        build=build,
    )
    return [d for d in days.column("d").to_pylist() if d <= horizon]


def _no_retry_on_bad_records(extract: Any, *args: Any, **kwargs: Any) -> Any:
    """Too many quarantined records, a watermark jump, pages that break the contract or
    source rows from the future are the data, not a hiccup: fail the task without
    Airflow's retries (minutes of backoff that cannot change the answer)."""
    try:
        return extract(*args, **kwargs)
    except (
        QuarantineThresholdError,
        WatermarkJumpError,
        ApiContractError,
        FutureCursorError,
    ) as exc:
        failed = fail_without_retry(exc)
        if failed is exc:  # no Airflow (python -m pipeline.nightly): the error itself
            raise
        raise failed from exc


def _payments_since() -> tuple[datetime | None, datetime | None]:
    """Where the payments window starts: the last loaded one (never past its data), and
    when that window was read."""
    mark = last_watermark(_published(), "payments_api", "payments")
    if mark is None or mark.window_end is None:
        return None, None
    if mark.max_cursor is not None and mark.max_cursor < mark.window_end:
        return mark.max_cursor, mark.extracted_at
    return mark.window_end, mark.extracted_at


def fx_days_to_refresh(business_date: date, days: list[date], horizon: date) -> list[date]:
    """Days whose FX rates are asked again even when cached: the trailing
    `FX_REVISION_DAYS` up to the published horizon, or every day on a full rebuild."""
    if _full_rebuild_requested(business_date):
        return list(days)
    first = horizon - timedelta(days=settings.fx_revision_days() - 1)
    return [d for d in days if first <= d <= horizon]


def _full_rebuild_requested(business_date: date) -> bool:
    """The run's source extract was a full one (new source or FULL=1): its manifest says."""
    try:
        orders = read_manifest(
            settings.landing_dir(), "source_db", "orders", run_id_for(business_date)
        )
    except FileNotFoundError:
        return False
    return bool(orders.get("source_changed") or orders.get("full_refresh"))


@timed
def extract_payments_api(
    business_date: date, accept_schema_drift: str | None = None
) -> dict[str, Any]:
    """Payments changed since the last load (bad records → quarantine).
    `accept_schema_drift`: as for `extract_source_db`.

    It needs nothing from the source_db side of the run: the DAG runs it at the
    same time as `extract_source_db`. The FX rates, which need the days with orders in the
    run's build, are fetched by `load_payments_api` once `load_source_db` has merged them.
    It does not stage the run's landings from the object store either (`_landing_synced`
    removes local runs that are not committed yet: the concurrent source_db extract's);
    the load that reads them does."""
    config = settings.parse_api_uri(settings.get_connection_uri(settings.PAYMENTS_API_CONN_ID))
    pull_mirror(settings.quarantine_store(), settings.quarantine_dir())
    accepted = settings.accept_schema_drift(accept_schema_drift)
    client = PaymentsApiClient(config)
    run_id = run_id_for(business_date)
    since, since_read_at = _payments_since()
    try:
        payments = _no_retry_on_bad_records(
            extract_payments,
            client,
            PaymentsPlan(
                run_id=run_id,
                landing_root=settings.landing_dir(),
                quarantine_root=settings.quarantine_dir(),
                updated_since=since,
                future_tolerance=timedelta(minutes=settings.future_tolerance_minutes()),
                max_jump=timedelta(days=settings.watermark_max_jump_days()) or None,
                previously_extracted_at=since_read_at,
                # `make replay` queued these; they land with this run until published
                replayed=open_replays(settings.quarantine_dir(), _published()),
                accept_drift=accepted,
            ),
        )
    finally:
        close = getattr(client, "close", None)
        if close:
            close()
        # a failed attempt's quarantine file is evidence too
        push_mirror(settings.quarantine_store(), settings.quarantine_dir())
    return {
        "payments": payments["rows"],
        "payments_quarantined": payments.get("quarantined", 0),
        "payments_replayed": payments.get("replayed", 0),
    }


def _extract_fx_rates(
    business_date: date, target: tuple[Any, Any], accept_schema_drift: str | None = None
) -> dict[str, Any]:
    """The FX rates of every business day with orders in the run's build up to the
    published horizon (the trailing `FX_REVISION_DAYS` asked again: providers revise
    rates; past days otherwise from the per-day cache) → landing Parquet."""
    config = settings.parse_api_uri(settings.get_connection_uri(settings.PAYMENTS_API_CONN_ID))
    horizon = published_horizon(business_date, target)
    days = fx_days_needed(business_date, horizon)
    refresh = fx_days_to_refresh(business_date, days, horizon)
    client = PaymentsApiClient(config)
    try:
        fx = extract_fx_rates(
            client,
            FxPlan(
                run_id=run_id_for(business_date),
                landing_root=settings.landing_dir(),
                days=days,
                refresh=refresh,
                accept_drift=settings.accept_schema_drift(accept_schema_drift),
            ),
        )
    finally:
        close = getattr(client, "close", None)
        if close:
            close()
    _push_landing_side_files()
    return fx


@timed
def load_payments_api(
    business_date: date, accept_schema_drift: str | None = None
) -> dict[str, Any]:
    """Fetch the FX rates of the days the build has orders on (`load_source_db` merged
    them; mostly from the per-day cache), quality-gate, then merge the run's payments and
    FX rates into the build."""
    wh, build = _run_build(business_date)
    _landing_synced(business_date)
    fx = _extract_fx_rates(business_date, (wh, build), accept_schema_drift)
    results = _validate_landed(business_date, "payments_api", ("payments", "fx_rates"))
    quality = _quality_gate(business_date, "payments_api", results, (wh, build))
    result = warehouse_load.load_payments_api(
        None, settings.landing_dir(), run_id_for(business_date), warehouse=wh, build=build
    )
    reconciled = _reconcile(business_date, "payments_api", (wh, build))
    return {
        "rows": result["rows"],
        "fx_rates_landed": fx["rows"],
        "quality": quality,
        "reconciled": reconciled,
    }


@timed
def dbt_build(business_date: date) -> dict[str, Any]:
    """`dbt build` of the whole project (models, snapshot, data tests) for this business day.

    Unit tests (fixed fixtures: they test the SQL, not the night's data) are left to
    development and CI (`make test`, a plain `dbt build`), as dbt recommends.

    `dbt source freshness` runs in the same dbt call, against the run's clock: a source
    table past its `error_after` stops the run before publish unless
    `ACCEPT_STALE_SOURCES` names it (`_freshness_gate`); past `warn_after` it is a warning.

    `fct_orders` is incremental: only the business days this run restated are rebuilt.
    A build whose `fct_orders` predates the current model (no `fx_rate` column, e.g. a
    warehouse from an older release) is rebuilt in full once. `sales_summary` covers every
    day up to the published horizon (`published_horizon`).
    """
    wh, build = _run_build(business_date)
    horizon = published_horizon(business_date, (wh, build))
    try:
        plan = dbt_runner.BuildPlan(
            report_tz=settings.report_tz_name(),
            through_date=horizon,
            run_id=run_id_for(business_date),
            full_refresh=_needs_full_refresh((wh, build), business_date),
            unit_tests=False,  # development and CI run them (make test, `dbt build`)
            freshness=True,
        )
        result = dbt_runner.dbt_build(wh, plan, build=build)
    except dbt_runner.DbtError as exc:
        if exc.result is None or not exc.result.nodes:
            raise
        tests = _dbt_tests(business_date, exc.result)
        if tests.success:  # a model failed, no data test: nothing for ops.quality_results
            raise
        fresh = _freshness(business_date, exc.result)
        where = _record_failed_gate(business_date, [tests, fresh], exc.result.run_results_path)
        raise dbt_runner.DbtError(f"{exc}\n{where}", exc.result) from exc
    results = [_dbt_tests(business_date, result), _freshness(business_date, result)]
    _store_quality((wh, build), business_date, results)
    _freshness_gate(business_date, results[1], result.run_results_path)
    return {**result.summary(), "horizon": horizon.isoformat()}


def _freshness(business_date: date, result: Any) -> Any:
    """The build's `dbt source freshness` as the quality suite `source_freshness`."""
    accepted = settings.accept_stale_sources()
    return freshness_results(result.freshness, run_id_for(business_date), accepted)


def _freshness_gate(business_date: date, fresh: Any, details: Path | None) -> None:
    """Log stale sources; stop before publish on one past `error_after` that the run does
    not accept: a night whose source stopped arriving must not publish its day as if it
    had no sales (recorded in the published `ops.quality_results` first)."""
    for outcome in fresh.warnings:
        log.warning("source freshness: %s", outcome.describe())
    if fresh.critical_failures:
        raise_for_critical([fresh], _record_failed_gate(business_date, [fresh], details))


def _dbt_tests(business_date: date, result: Any) -> Any:
    """dbt's data tests of a build as the quality suite `dbt` (quality/results.py)."""
    kept = result.run_results_path
    manifest = kept.parent / "manifest.json" if kept is not None else None
    return dbt_test_results(result.nodes, run_id_for(business_date), manifest)


def _store_quality(target: tuple[Any, Any], business_date: date, results: list) -> None:
    """Results into the build's `ops.quality_results`, in one transaction."""
    wh, build = target
    with wh.transaction(build) as session:
        store_results(session, run_id_for(business_date), results)


def _needs_full_refresh(target: tuple[Any, Any], business_date: date | None = None) -> bool:
    """Rebuild the marts and daily_sales in full: the run read a new source or was asked
    for a full rebuild (both recorded in its landed manifest), or the build predates the
    current fct_orders."""
    if business_date is not None and _full_rebuild_requested(business_date):
        return True
    wh, build = target
    with wh.transaction(build) as session:
        if not session.exists("marts", "fct_orders"):
            return False
        columns = session.table_columns(session.table("marts", "fct_orders"))
    return "fx_rate" not in columns


@timed
def transform_daily_sales(business_date: date) -> dict[str, int]:
    """The ETL path: pandas over the warehouse's current `raw.*` → `analytics.daily_sales`.

    Incremental: only the days this run changed (transform.daily_sales.plan_daily_sales)
    are recomputed and replaced; the first run, a new source, a new REPORT_TZ or a full
    rebuild recompute all. Every day up to the published horizon is covered.
    """
    wh, build = _run_build(business_date)
    tz = settings.report_tz_name()
    full = _needs_full_refresh((wh, build), business_date)
    horizon = published_horizon(business_date, (wh, build))
    plan = daily_sales.plan_daily_sales(
        wh, tz, horizon, run_id_for(business_date), full=full, build=build
    )
    log.info("daily_sales through %s: %s", horizon, plan.summary())
    frame = daily_sales.compute_daily_sales(wh, tz, horizon, build=build, plan=plan)
    result = validate_frame(
        daily_sales.to_arrow(frame),
        "analytics.daily_sales",
        table="analytics.daily_sales",
        run_id=run_id_for(business_date),
    )
    _quality_gate(business_date, "daily_sales", [result], (wh, build))
    rows = daily_sales.publish_daily_sales(frame, wh, plan, build=build)
    return {"daily_sales": rows, "recomputed_days": _day_ranges(plan.days)}


def _day_ranges(days: list[date]) -> list[str]:
    """Sorted days as compact ranges for logs and run stats: ["2026-11-01..2026-11-03"]."""
    return [
        a.isoformat() if a == b else f"{a}..{b}" for a, b in daily_sales.day_ranges(sorted(days))
    ]


@timed
def check_parity(business_date: date) -> dict[str, Any]:
    """ETL ↔ ELT: daily_sales summed over categories equals sales_summary, for every
    (date, region) of both whole tables (every day that will be published)."""
    wh, build = _run_build(business_date)
    result = check_sales_parity(wh, build=build)
    return {**result, "horizon": published_horizon(business_date, (wh, build)).isoformat()}


@timed
def publish(business_date: date, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record the run's metrics in the build, then swap it in atomically (the only
    publishing step: metrics and tables become visible together)."""
    wh, build = _run_build(business_date)
    changed = changed_analytics_tables(wh, build)  # their Assets, once published (the DAG)
    if stats is not None:
        _landing_synced(business_date)  # the run metrics read the run's manifests
        with wh.transaction(build) as session:
            run_metrics.store(session, run_metrics.collect(session, business_date, stats))
    policy = _retention_policy()
    seconds = wh.publish(
        build,
        check_lease=lambda: lease.check_held(wh),  # a run whose lease was taken never publishes
        version=run_id_for(business_date),
        keep=policy.warehouse_versions,
    )
    return {
        "published": wh.describe(),
        "swap_seconds": round(seconds, 4),
        "changed_tables": changed,
    }


def _retention_policy() -> Any:
    return retention.RetentionPolicy.load(settings.retention_config_path())


@timed
def apply_retention(business_date: date) -> dict[str, Any]:
    """The last step of a successful night: prune what `config/retention.yml` lets go."""
    horizon = last_published_day(_published()) or business_date
    quarantine = settings.quarantine_store()
    pull_mirror(quarantine, settings.quarantine_dir())  # what it prunes goes from the store
    with run_files.mirrored_report() as report_dir:  # pruned pages go from the store too
        removed = retention.prune(
            settings.data_dir(),
            settings.warehouse_path(),
            _retention_policy(),
            horizon=max(horizon, business_date),
            run_id=run_id_for(business_date),
            dirs={
                "landing": settings.landing_dir(),
                "quarantine": settings.quarantine_dir(),
                "report": report_dir,
            },
        )
    push_mirror(quarantine, settings.quarantine_dir())
    runs_gone = run_files.prune_store(
        _retention_policy().run_folders_days, max(horizon, business_date), run_id_for(business_date)
    )
    if runs_gone:
        removed.setdefault("run_folders", []).extend(runs_gone)
    landing = settings.landing_store()
    if landing is not None:  # the same rule on the store (the stage holds only some runs)
        policy = _retention_policy()
        gone = landing.prune_runs(
            policy.landing_runs_days, max(horizon, business_date), run_id_for(business_date)
        )
        if gone:
            removed.setdefault("landing_runs", []).extend(f"{landing.describe()}/{g}" for g in gone)
    return retention.summary(removed)


@timed
def check_alerts(business_date: date) -> dict[str, Any]:
    """Evaluate the alert rules on the published run metrics; send what fires (linked to
    the Airflow run; `for_runs` streaks from the run files: alerting/runs.py)."""
    run_id = run_id_for(business_date)
    rows = _warehouse().read_arrow(
        "select cast(metrics as varchar) as metrics from {ops}.pipeline_runs where run_id = ?",
        [run_id],
    )
    if rows.num_rows == 0:
        raise RuntimeError(f"no metrics published for run {run_id}")
    stored = rows.column("metrics")[0].as_py()
    metrics = stored if isinstance(stored, dict) else json.loads(stored)
    thresholds = load_thresholds(settings.alerts_config_path())
    history = run_metrics.history(_published(), run_id)
    alerts = published_run_alerts(metrics, history, thresholds)
    sent = len(alerts)
    statsd = run_metrics.emit_statsd(metrics, *settings.statsd_address())
    return {"alerts": len(alerts), "sent": sent, "statsd_lines": statsd}


@timed
def build_report(business_date: date, run_stats: dict[str, Any]) -> str:
    """The HTML report of the day (and the index of all days)."""
    with (
        run_files.mirrored_report() as report_dir
    ):  # NIGHTSHIFT_DATA_URL: the store's report/ folder
        path = render_report(_published(), report_dir, business_date, run_stats)
    if settings.data_url():
        return f"{settings.data_url()}/report/{path.name}"
    return str(path)


@dataclasses.dataclass(frozen=True)
class NightSteps:
    """What the night's steps returned that its statistics read: `extract_source_db`,
    `load_source_db`, `extract_payments_api`, `load_payments_api`,
    `transform_daily_sales` and `check_parity`, in the DAG's order."""

    extracted: dict[str, Any]
    loaded: dict[str, Any]
    api: dict[str, Any]
    api_loaded: dict[str, Any]
    etl: dict[str, Any]
    parity: dict[str, Any]


def run_stats(business_date: date, steps: NightSteps) -> dict[str, Any]:
    """The report's run statistics (small, JSON-able; the DAG builds the same)."""
    extracted, loaded, api = steps.extracted, steps.loaded, steps.api
    api_loaded, etl, parity = steps.api_loaded, steps.etl, steps.parity
    published = {k: v for k, v in etl.items() if k != "recomputed_days"}
    return {
        "run_id": run_id_for(business_date),
        "horizon": parity.get("horizon", business_date.isoformat()),
        "restated_days": len(loaded["restated_days"]),
        "recomputed_days": etl.get("recomputed_days", []),
        "extracted": {
            **extracted,
            "payments": api["payments"],
            # fetched by load_payments_api since issue 16 (the extract runs beside source_db's)
            "fx_rates": api.get("fx_rates", api_loaded.get("fx_rates_landed", 0)),
        },
        "quarantined": {"payments": api["payments_quarantined"]},
        "loaded": {**loaded["rows"], **api_loaded["rows"]},
        "deleted": loaded["deleted"],
        "published": {"sales_summary": parity["sales_summary_rows"], **published},
    }


def run_all(
    business_date: date, full_refresh: bool = False, allow_mass_delete: bool = False
) -> dict[str, Any]:
    """Every step in order, without Airflow (the DAG runs the same functions), under
    the warehouse's lease (warehouse/lease.py): one run at a time."""
    with lease.held(
        settings.warehouse_lease_target(),
        lease.new_holder("nightly"),
        f"nightly {business_date} (python -m pipeline.nightly)",
        ttl_s=settings.warehouse_lease_ttl_seconds(),
        wait_s=settings.warehouse_lease_wait_seconds(),
    ):
        return _run_all(business_date, full_refresh, allow_mass_delete)


def _run_all(business_date: date, full_refresh: bool, allow_mass_delete: bool) -> dict[str, Any]:
    extracted = extract_source_db(business_date, full_refresh)
    loaded = load_source_db(business_date, allow_mass_delete)
    api = extract_payments_api(business_date)
    api_loaded = load_payments_api(business_date)
    dbt_build(business_date)
    etl = transform_daily_sales(business_date)
    parity = check_parity(business_date)
    stats = run_stats(business_date, NightSteps(extracted, loaded, api, api_loaded, etl, parity))
    publish(business_date, stats)
    report = build_report(business_date, stats)
    alerts = check_alerts(business_date)
    retained = apply_retention(business_date)
    return {**stats, "report": report, "alerts": alerts, "retention": retained}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--date", required=True, type=date.fromisoformat, help="business day")
    parser.add_argument("--full", action="store_true", help="read the source in full, rebuild all")
    parser.add_argument(
        "--allow-mass-delete", action="store_true", help="let this run delete past the guard"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    result = run_all(args.date, args.full, args.allow_mass_delete)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
