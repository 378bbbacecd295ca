"""The nightly pipeline's steps, callable from the Airflow DAG or from the command line.

Each step takes the business day, resolves its configuration at the edge (settings),
does one transactional piece of work and returns a small JSON-able summary. The DAG
(`dags/nightly_sales.py`) only wires these together.

    python -m pipeline.nightly --date 2026-11-27      # all steps, without Airflow
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import date, datetime, timedelta
from typing import Any

from pipeline import settings

log = logging.getLogger(__name__)

DB_TABLES = ("users", "products", "orders", "order_items")


def run_id_for(business_date: date) -> str:
    """Landing run id of a nightly run: the business day (a rerun replaces it)."""
    return business_date.isoformat()


def business_date_for(logical_date: datetime, override: str | None = None) -> date:
    """The business day a run covers: the day before the run's date in REPORT_TZ."""
    if override:
        return date.fromisoformat(str(override))
    local = logical_date.astimezone(settings.report_tz())
    return local.date() - timedelta(days=1)


def landing_run_ids(business_date: date) -> dict[str, str]:
    run_id = run_id_for(business_date)
    ids = {f"source_db/{t}": run_id for t in DB_TABLES}
    ids["payments_api/payments"] = run_id
    ids["payments_api/fx_rates"] = run_id
    return ids


def extract_source_db(business_date: date) -> dict[str, Any]:
    """Full extract of the operational tables (primary, or the replica when configured)."""
    from extract.db_extract import extract_tables

    uri = settings.get_connection_uri(settings.SOURCE_DB_REPLICA_CONN_ID, required=False)
    if uri:
        log.info("reading from the replica (source_db_replica)")
    else:
        uri = settings.get_connection_uri(settings.SOURCE_DB_CONN_ID)
    manifests = extract_tables(
        uri, run_id=run_id_for(business_date), landing_root=settings.landing_dir()
    )
    return {name: m["rows"] for name, m in manifests.items()}


def fx_days_needed(business_date: date) -> list[date]:
    """Business days (in REPORT_TZ) up to `business_date` that have at least one order."""
    import duckdb

    from extract.landing import run_dir

    orders = run_dir(settings.landing_dir(), "source_db", "orders", run_id_for(business_date))
    con = duckdb.connect()
    try:
        rows = con.execute(
            "select distinct cast(timezone(?, created_at) as date) as d "
            "from read_parquet(?, hive_partitioning = false) where created_at is not null order by d",
            [settings.report_tz_name(), str(orders / "*.parquet")],
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows if r[0] <= business_date]


def extract_payments_api(business_date: date) -> dict[str, Any]:
    """Payments (all, deduplicated) and the FX rates of every business day with orders."""
    from extract.api_client import PaymentsApiClient
    from extract.api_extract import extract_fx_rates, extract_payments

    config = settings.parse_api_uri(settings.get_connection_uri(settings.PAYMENTS_API_CONN_ID))
    client = PaymentsApiClient(config)
    run_id = run_id_for(business_date)
    try:
        payments = extract_payments(
            client,
            run_id=run_id,
            landing_root=settings.landing_dir(),
            quarantine_root=settings.quarantine_dir(),
        )
        fx = extract_fx_rates(
            client,
            days=fx_days_needed(business_date),
            run_id=run_id,
            landing_root=settings.landing_dir(),
        )
    finally:
        close = getattr(client, "close", None)
        if close:
            close()
    return {
        "payments": payments["rows"],
        "payments_quarantined": payments.get("quarantined", 0),
        "fx_rates": fx["rows"],
    }


def load_warehouse(business_date: date) -> dict[str, int]:
    """Landing Parquet of this run → DuckDB `raw` schema, all tables in one transaction."""
    from warehouse.load import load_raw

    return load_raw(
        settings.warehouse_path(), settings.landing_dir(), landing_run_ids(business_date)
    )


def dbt_build(business_date: date) -> dict[str, Any]:
    """`dbt build` of the whole project (models + tests) for this business day."""
    from warehouse.dbt_runner import dbt_build as run_build

    result = run_build(
        settings.warehouse_path(),
        report_tz=settings.report_tz_name(),
        through_date=business_date,
    )
    return _summary(result)


def _summary(result: Any) -> dict[str, Any]:
    if isinstance(result, dict):
        return result
    for attr in ("summary", "to_dict", "as_dict"):
        fn = getattr(result, attr, None)
        if callable(fn):
            return fn()
        if isinstance(fn, dict):
            return fn
    return {"result": str(result)}


def transform_daily_sales(business_date: date) -> dict[str, int]:
    """The ETL path: pandas over the landed files → `analytics.daily_sales`."""
    from transform.daily_sales import compute_daily_sales, publish_daily_sales

    frame = compute_daily_sales(
        settings.landing_dir(),
        landing_run_ids(business_date),
        settings.report_tz_name(),
        business_date,
    )
    rows = publish_daily_sales(frame, settings.warehouse_path())
    return {"daily_sales": rows}


def check_parity(business_date: date) -> dict[str, Any]:
    """ETL ↔ ELT: daily_sales summed over categories equals sales_summary, per (date, region)."""
    from quality.parity import check_sales_parity

    return check_sales_parity(settings.warehouse_path(), through_date=business_date)


def build_report(business_date: date, run_stats: dict[str, Any]) -> str:
    """The HTML report of the day (and the index of all days)."""
    from report.build import build_report as build

    path = build(settings.warehouse_path(), settings.report_dir(), business_date, run_stats)
    return str(path)


def run_all(business_date: date) -> dict[str, Any]:
    """Every step in order, without Airflow (the DAG runs the same functions)."""
    extracted = extract_source_db(business_date)
    api = extract_payments_api(business_date)
    loaded = load_warehouse(business_date)
    dbt_build(business_date)
    etl = transform_daily_sales(business_date)
    parity = check_parity(business_date)
    stats = {
        "run_id": run_id_for(business_date),
        "extracted": {**extracted, "payments": api["payments"], "fx_rates": api["fx_rates"]},
        "quarantined": {"payments": api["payments_quarantined"]},
        "loaded": loaded,
        "published": {"sales_summary": parity["sales_summary_rows"], **etl},
    }
    report = build_report(business_date, stats)
    return {**stats, "report": report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", required=True, type=date.fromisoformat, help="business day")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    print(json.dumps(run_all(args.date), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
