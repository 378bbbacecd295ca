"""`make demo`: demo sources, the demo API, and one nightly run through Airflow.

    python -m demo.run [--data-dir data] [--days 60] [--port 8765]

Idempotent: the demo source is generated once (a second run reuses it) and the nightly
run for the same day replaces what it published before.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from core import clock, settings
from core.files import write_with
from demo.generator import generate
from demo.servers import DEMO_TOKEN, demo_connections, demo_paths, running_api
from pipeline import airflow_run

__all__ = ["DEMO_TOKEN", "airflow_main", "demo_paths", "main", "running_api"]


def airflow_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`nightshift nightly | backfill | ui` (pipeline/airflow_run.py), with the demo's
    source and API when no connection is configured: `make nightly` works right after
    `make demo`."""
    return airflow_run.main(argv, prog, fallback_connections=demo_connections)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.token is not None:
        parser.error("--token is refused (visible in `ps`): set $DEMO_API_TOKEN instead")
    token = settings.env("DEMO_API_TOKEN", DEMO_TOKEN)

    data_dir = args.data_dir.resolve()
    os.environ["NIGHTSHIFT_DATA_DIR"] = str(data_dir)
    paths = demo_paths(data_dir)
    business_date = clock.now().astimezone(settings.report_tz()).date() - timedelta(days=1)
    print(f"[demo] source: {paths['source']} ({args.days} days ending {business_date})")
    _demo_source(paths, args, business_date)
    with running_api(paths["payments"], token=token, port=args.port or None) as api_uri:
        print(f"[demo] API on {api_uri.split('@')[1]}; running nightly_sales for {business_date}")
        airflow_run.run_dag(
            business_date,
            {
                "AIRFLOW_CONN_SOURCE_DB": f"sqlite:///{paths['source']}",
                "AIRFLOW_CONN_PAYMENTS_API": api_uri,
                "NIGHTSHIFT_DATA_DIR": str(data_dir),
            },
        )
    _print_next_steps(business_date)
    return 0


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Build the demo sources (SQLite + the payments/FX API) and run "
        "nightly_sales for yesterday through Airflow.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=settings.data_dir(),
        help="sources, landing zone, warehouse and report (default: NIGHTSHIFT_DATA_DIR, ./data)",
    )
    parser.add_argument("--days", type=int, default=60, help="days of demo history (default 60)")
    parser.add_argument(
        "--orders-per-day", type=int, default=200, help="orders per day (default 200)"
    )
    parser.add_argument("--seed", type=int, default=42, help="generator seed (default 42)")
    parser.add_argument("--port", type=int, default=0, help="the demo API's port (0: any free)")
    parser.add_argument(
        "--token",
        help="refused: the API token comes from $DEMO_API_TOKEN (a command line shows in `ps`)",
    )
    return parser


def _demo_source(paths: dict[str, Path], args: argparse.Namespace, business_date: date) -> None:
    """The demo's SQLite source and payments, generated once (a later demo reuses them).

    Built under temporary names and renamed (`core.files.write_with`: payments first,
    then the source), so an interrupted demo never leaves a half-written source that a
    later run would mistake for a complete one."""
    paths["dir"].mkdir(parents=True, exist_ok=True)
    if paths["source"].exists() and paths["payments"].exists():
        print("[demo] reusing the existing demo source (delete data/demo to rebuild it)")
        return
    summary: dict[str, Any] = {}

    def generate_both(tmp_source: Path) -> None:
        def generate_into(tmp_payments: Path) -> None:
            summary.update(
                generate(
                    f"sqlite:///{tmp_source}",
                    seed=args.seed,
                    days=args.days,
                    end_date=business_date,
                    orders_per_day=args.orders_per_day,
                    payments_db=tmp_payments,
                    if_exists="replace",
                )
            )

        write_with(paths["payments"], generate_into, unique=False)

    write_with(paths["source"], generate_both, unique=False)
    print(f"[demo] generated: {summary['rows']}")


def _print_next_steps(business_date: date) -> None:
    """Where the report and the warehouse are, and a first query to try."""
    report = settings.report_dir() / f"{business_date.isoformat()}.html"
    print()
    print(f"Report:    {report}")
    print(f"Index:     {report.parent / 'index.html'}")
    query = (
        "select date, region, total_sales_usd, order_count from analytics.sales_summary "
        "order by date desc, region limit 10"
    )
    print(f"Warehouse: {airflow_run.published_warehouse()}")
    url = settings.warehouse_url()
    if url is not None:  # a server warehouse: the query needs its connection too
        print("Try (the password, if any, in place of ***):")
        shown = settings.safe_warehouse_url(url)
        print(f'  AIRFLOW_CONN_WAREHOUSE={shlex.quote(shown)} make query SQL="{query}"')
        return
    warehouse = settings.warehouse_path()
    print("Try:")
    nightshift = shlex.quote(str(Path(sys.executable).parent / "nightshift"))
    print(f"  {nightshift} query --warehouse {shlex.quote(str(warehouse))} \\")
    print(f'    --sql "{query}"')


if __name__ == "__main__":
    raise SystemExit(main())
