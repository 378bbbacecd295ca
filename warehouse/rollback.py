"""`make rollback [TO=<run id>]`: publish a kept version of the warehouse again.

Every nightly publish keeps its file as a version (warehouse/publish.py). A rollback
copies the chosen version to a build file, records itself in that copy's
`ops.pipeline_runs` (run id `rollback-<UTC stamp>`, the restored run in `metrics`), and
publishes it with the same atomic rename as a nightly run: readers see the old or the
new warehouse, never a mix. It holds the warehouse's lease (warehouse/lease.py) while it
does: it waits for, or fails naming, a run that is building. The report is rebuilt to match: pages of days the restored
warehouse does not publish are removed, the others rebuilt from it.

    python -m warehouse.rollback                 # the version before the current one
    python -m warehouse.rollback --to 2026-11-25 # the newest version run 2026-11-25 published
    python -m warehouse.rollback --list
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from core import clock, ops, run_ids, settings
from core.files import write_with
from warehouse.publish import (
    build_path_for,
    last_published_day,
    list_versions,
    publish_build,
    published_identity,
    record_base,
    versions_dir,
)

ROLLBACK_PREFIX = "rollback-"


class RollbackError(RuntimeError):
    """No version to restore; the message lists the kept ones."""


def _current_index(warehouse_path: Path, versions: list[tuple[str, Path]]) -> int | None:
    """Which kept version is the published file: the same inode, else (a failed gate
    re-published it with its results added) the newest version of the run that
    published it last (`ops.pipeline_runs`)."""
    if not warehouse_path.exists():
        return None
    for i in range(len(versions) - 1, -1, -1):
        if os.path.samefile(versions[i][1], warehouse_path):
            return i
    last_run = _last_run_id(warehouse_path)
    for i in range(len(versions) - 1, -1, -1):
        if versions[i][0] == last_run:
            return i
    return None


def _last_run_id(warehouse_path: Path) -> str | None:
    import duckdb

    from warehouse.backends.duckdb import connect

    con = connect(warehouse_path, read_only=True)
    try:
        row = con.execute(
            "select run_id from ops.pipeline_runs order by published_at desc limit 1"
        ).fetchone()
    except duckdb.CatalogException:  # nothing published by a night yet
        return None
    finally:
        con.close()
    return row[0] if row else None


def choose_version(warehouse_path: Path, to_run_id: str | None) -> tuple[str, Path]:
    """The version to restore: the newest one `to_run_id` published, or the one before
    the published file."""
    versions = list_versions(warehouse_path)
    kept = ", ".join(run for run, _ in versions) or "none"
    current = _current_index(warehouse_path, versions)
    if to_run_id is not None:
        matches = [v for v in versions if v[0] == to_run_id]
        if not matches:
            raise RollbackError(
                f"no kept version of run {to_run_id!r} in {versions_dir(warehouse_path)} "
                f"(kept, oldest first: {kept})"
            )
        chosen = matches[-1]
        if current is not None and os.path.samefile(chosen[1], versions[current][1]):
            raise RollbackError(f"run {to_run_id!r} is what is published now: nothing to do")
        return chosen
    before = (current if current is not None else len(versions)) - 1
    if before < 0:
        raise RollbackError(
            f"no version before the published one in {versions_dir(warehouse_path)} "
            f"(kept, oldest first: {kept})"
        )
    return versions[before]


def _record(build: Path, restored_run: str, restored: Path, replaced: str | None) -> str:
    """A row for the rollback in the copy's ops.pipeline_runs (published with it)."""
    from warehouse.backends.duckdb import connect

    now = clock.now()
    run_id = f"{ROLLBACK_PREFIX}{run_ids.stamp(now, micros=False)}"
    day = last_published_day(build) or now.date()
    metrics = {
        "run_id": run_id,
        "kind": "rollback",
        "restored_run_id": restored_run,
        "restored_version": restored.name,
        "replaced_version": replaced,
    }
    con = connect(build)
    try:
        con.execute("begin")
        con.execute(ops.create_sql("pipeline_runs", "task_metrics", schema=ops.SCHEMA))
        con.execute(
            "insert into ops.pipeline_runs (run_id, business_date, started_at, published_at, "
            "metrics) values (?, ?, ?, ?, ?)",
            [run_id, day, now, now, json.dumps(metrics)],
        )
        con.execute("commit")
    finally:
        con.close()
    return run_id


def rollback(warehouse_path: Path, to_run_id: str | None = None) -> dict[str, Any]:
    """Publish a kept version again (atomically); return what was restored.

    Under the warehouse's lease (warehouse/lease.py): never while a run builds."""
    from warehouse import lease

    warehouse_path = Path(warehouse_path)
    with lease.held(
        warehouse_path,
        lease.new_holder("rollback"),
        f"make rollback{f' TO={to_run_id}' if to_run_id else ''}",
        ttl_s=settings.warehouse_lease_ttl_seconds(),
        wait_s=settings.warehouse_lease_wait_seconds(),
    ):
        return _rollback(warehouse_path, to_run_id)


def _rollback(warehouse_path: Path, to_run_id: str | None) -> dict[str, Any]:
    restored_run, restored = choose_version(warehouse_path, to_run_id)
    versions = list_versions(warehouse_path)
    current = _current_index(warehouse_path, versions)
    replaced = versions[current][1].name if current is not None else None
    build = build_path_for(warehouse_path, "rollback")
    build.unlink(missing_ok=True)
    base = published_identity(warehouse_path)  # what is published now: the rollback replaces it
    # a copy: the kept version itself is never written
    write_with(build, lambda tmp: shutil.copyfile(restored, tmp), unique=False)
    record_base(build, warehouse_path, base)
    run_id = _record(build, restored_run, restored, replaced)
    publish_build(build, warehouse_path, version=run_id)
    return {
        "run_id": run_id,
        "restored_run_id": restored_run,
        "restored_version": restored.name,
        "replaced_version": replaced,
        "last_day": str(last_published_day(warehouse_path)),
    }


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Publish a kept version of the DuckDB warehouse again: the one before the "
        "current, or --to <run id>; the report pages follow.",
    )
    parser.add_argument("--to", dest="to_run_id", help="run id whose version to restore")
    parser.add_argument("--list", action="store_true", help="list the kept versions")
    args = parser.parse_args(argv)
    if settings.warehouse_url() is not None:
        print(
            f"rollback: the warehouse is {settings.warehouse().describe()}: make rollback "
            "restores the versions a DuckDB warehouse keeps (WAREHOUSE_VERSIONS); a server "
            "warehouse keeps none. Restore it with the server's own backups or point-in-time "
            "recovery, then rerun the day (docs/warehouse-backends.md)",
            file=sys.stderr,
        )
        return 2
    warehouse_path = settings.warehouse_path()
    if args.list:
        versions = list_versions(warehouse_path)
        current = _current_index(warehouse_path, versions)
        for i, (run, path) in enumerate(versions):
            print(f"{'*' if i == current else ' '} {run:<28} {path.name}")
        return 0
    from warehouse.lease import WarehouseBusyError

    try:
        result = rollback(warehouse_path, args.to_run_id)
    except (RollbackError, WarehouseBusyError) as exc:
        print(f"rollback: {exc}", file=sys.stderr)
        return 2
    from core.run_files import mirrored_report
    from report.build import rebuild_all_pages

    with mirrored_report() as report_dir:  # NIGHTSHIFT_DATA_URL: the store's report/ folder
        pages = rebuild_all_pages(warehouse_path, report_dir)
    print(
        f"rolled back to the version run {result['restored_run_id']} published "
        f"({result['restored_version']}); published days now end {result['last_day']}; "
        f"recorded as {result['run_id']} in ops.pipeline_runs; report: {pages}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
