"""`nightshift`: one command for what the project's modules run (`nightshift --help`).

Each subcommand hands its arguments to an existing module's `main(argv, prog)` (or the
function a command names), which owns the options and the work; this module only maps
names to modules. It imports a module only when its subcommand runs, so
`nightshift --help` stays fast.

`nightly`, `backfill` and `ui` run `pipeline.airflow_run` through `demo.run`, which adds
the demo's source and API for a run that has no connection configured.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A subcommand: the module whose `entry` function (`main`) runs it, and the first
    arguments it is handed (a sub-command name of that module's own parser, if it has
    several)."""

    module: str
    summary: str
    make: str = ""
    prefix: tuple[str, ...] = ()
    entry: str = "main"


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "demo.run", "demo sources (SQLite + API), then one night through Airflow", "make demo"
    ),
    "nightly": Command(
        "demo.run",
        "nightly_sales for one business day through Airflow (airflow dags test)",
        "make nightly",
        ("nightly",),
        "airflow_main",
    ),
    "backfill": Command(
        "demo.run",
        "nightly_sales for each day of a range, in order",
        "make backfill",
        ("backfill",),
        "airflow_main",
    ),
    "ui": Command(
        "demo.run",
        "the Airflow UI (standalone) on http://127.0.0.1:8080",
        "make airflow",
        ("ui",),
        "airflow_main",
    ),
    "steps": Command(
        "pipeline.nightly",
        "every step of one night in this process, without Airflow (scripts, benchmarks)",
    ),
    "rollback": Command(
        "warehouse.rollback",
        "publish a kept earlier version of the DuckDB warehouse again",
        "make rollback",
    ),
    "lease": Command(
        "warehouse.lease",
        "who holds the warehouse's run lease; `lease unlock` removes a dead run's",
        "make unlock",
    ),
    "replay": Command(
        "extract.replay", "re-validate quarantined payments after the cause is fixed", "make replay"
    ),
    "query": Command(
        "warehouse.query", "read-only SQL on the published warehouse (shell or --sql)", "make query"
    ),
    "dev-warehouse": Command(
        "warehouse.dev_copy",
        "copy the published DuckDB warehouse to data/dev.duckdb, for dbt build by hand",
        "make dev-warehouse",
    ),
    "report": Command(
        "report.build", "rebuild every day page of the report from the published warehouse"
    ),
    "migrate": Command(
        "migrate.__main__", "zero-downtime source migration: schema, backfill, verify, gate"
    ),
    "migration-demo": Command(
        "demo.migration",
        "the migration runbook end to end on the demo data (PostgreSQL)",
        "make migration-demo",
    ),
    "demo-data": Command(
        "demo.generator", "the demo source generator: generate, next-day (one more day)"
    ),
    "demo-api": Command(
        "demo.api", "the demo payments/FX API, with optional faults (token: $DEMO_API_TOKEN)"
    ),
}


def _parser() -> argparse.ArgumentParser:
    """The top level only: the list of subcommands for `--help` and unknown names."""
    width = max(len(name) for name in COMMANDS)
    listing = "\n".join(
        f"  {name:<{width}}  {c.summary}" + (f" ({c.make})" if c.make else "")
        for name, c in COMMANDS.items()
    )
    parser = argparse.ArgumentParser(
        prog="nightshift",
        description="Nightly batch ETL/ELT for sales data: Airflow, dbt, pandas, "
        "Great Expectations. `nightshift <command> --help` shows a command's options.",
        epilog=f"commands:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", choices=list(COMMANDS), metavar="<command>", help="one of the commands below"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `nightshift <command> [options]`; return the command's exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        _parser().parse_args(args[:1])  # help, or an error naming the bad or missing command
        return 2  # not reached: parse_args exits
    name, rest = args[0], args[1:]
    command = COMMANDS[name]
    run = getattr(importlib.import_module(command.module), command.entry)
    # A module with several sub-commands names the chosen one after its own prog.
    prog = "nightshift" if command.prefix else f"nightshift {name}"
    status = run([*command.prefix, *rest], prog=prog)
    return int(status or 0)


if __name__ == "__main__":
    raise SystemExit(main())
