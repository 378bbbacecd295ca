"""Command line: `python -m migrate {schema,backfill,verify,gate} …`.

Databases: `--old URL` / `--new URL`, or the connections `source_db` /
`migration_target_db` (AIRFLOW_CONN_SOURCE_DB, AIRFLOW_CONN_MIGRATION_TARGET_DB).
Exit status: 0 ok; 1 verification found differences or a gate said no; 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from core.settings import ConfigError, get_connection_uri
from migrate.backfill import run_backfill
from migrate.checks import PHASES, decide, record_check
from migrate.db import apply_new_schema, make_engine
from migrate.dual_write import record_repairs
from migrate.mapping import MappingError, load_mappings, select_mappings
from migrate.state import ensure_journal, ensure_ops
from migrate.tasks import NEW_CONN_ID, OLD_CONN_ID
from migrate.verify import verify_table


def _engine(url: str | None, conn_id: str) -> Engine:
    return make_engine(url or get_connection_uri(conn_id) or "")


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m migrate",
        description="Zero-downtime move of the source database to a new schema "
        "(docs/migration-runbook.md): schema, backfill, verify, gate. Exit status: 0 ok; "
        "1 differences found or a gate said no; 2 bad usage.",
    )
    parser.add_argument("--old", help=f"old database URL (default: connection {OLD_CONN_ID})")
    parser.add_argument("--new", help=f"new database URL (default: connection {NEW_CONN_ID})")
    parser.add_argument("--config", help="mapping YAML (default config/migration.yml)")
    parser.add_argument("--tables", default="", help="comma-separated mapping names (default all)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("schema", help="create the new schema (migrate/new_schema.sql) and state")
    bf = sub.add_parser("backfill", help="replay the repair log, copy history old → new")
    bf.add_argument("--batch-size", type=int, default=5_000, help="rows per batch (default 5000)")
    bf.add_argument("--rows-per-second", type=float, default=0, help="0: unlimited")
    bf.add_argument("--restart", action="store_true", help="forget checkpoints, copy again")
    bf.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    vf = sub.add_parser("verify", help="compare old and new through the mapping")
    vf.add_argument(
        "--phase", type=int, default=3, choices=sorted(PHASES), help="recorded with the result"
    )
    vf.add_argument("--run-id", default=None, help="recorded in ops.migration_checks")
    vf.add_argument("--no-record", action="store_true", help="do not store the result")
    vf.add_argument("--repair", action="store_true", help="queue differing keys for replay")
    gt = sub.add_parser("gate", help="decide (and record) whether a phase may start")
    gt.add_argument(
        "--phase", type=int, required=True, choices=sorted(PHASES), help="the phase to start"
    )
    gt.add_argument(
        "--required-clean-runs", type=int, default=3, help="clean verify runs needed (default 3)"
    )
    gt.add_argument("--run-id", default=None, help="recorded in ops.migration_checks")
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = _parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run_id = getattr(args, "run_id", None) or f"cli-{uuid.uuid4().hex[:12]}"
    try:
        mappings = load_mappings(args.config)
        tables = select_mappings(mappings, [t for t in args.tables.split(",") if t] or None)
        old, new = _engine(args.old, OLD_CONN_ID), _engine(args.new, NEW_CONN_ID)
        if args.command == "schema":
            apply_new_schema(new)
            ensure_ops(new)
            ensure_journal(old)
            print("new schema and migration state tables are in place")
            return 0
        if args.command == "backfill":
            replayed, results = run_backfill(
                old,
                new,
                mappings,
                tables,
                batch_size=args.batch_size,
                rows_per_second=args.rows_per_second,
                restart=args.restart,
                progress_bar=False if args.no_progress else None,
            )
            print(f"repair log: {replayed} entries replayed")
            for r in results:
                print(f"{r.table}: copied {r.rows_copied:,} rows now, {r.rows_done:,} in all")
            return 0
        if args.command == "verify":
            clean = True
            for mapping in tables:
                result = verify_table(old, new, mapping)
                if not args.no_record:
                    record_check(new, run_id, args.phase, result)
                print(result.summary())
                if not result.clean:
                    clean = False
                    print(f"  sample keys: {result.sample_keys(10)}")
                    if args.repair:
                        keys = [*result.missing, *result.extra, *(k for k, _ in result.changed)]
                        queued = record_repairs(
                            old, [(mapping.old_table, k) for k in keys], "queued by verify"
                        )
                        print(f"  {queued} keys queued in the repair log (run backfill)")
            return 0 if clean else 1
        decision = decide(
            old, new, args.phase, tables, run_id, required_clean_runs=args.required_clean_runs
        )
        print(decision.message())
        return 0 if decision.allowed else 1
    except (MappingError, ConfigError, ValueError) as exc:
        print(f"migrate: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
