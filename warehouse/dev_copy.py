"""`make dev-warehouse`: a private copy of the published DuckDB warehouse to build the dbt
project on by hand.

The published file is never written in place: a publish renames a tested build over it,
and its newest kept version (`make rollback`) is a hard link to the same bytes. A
`dbt build` run on the published file itself would change both, without the night's
gates. So the `duckdb` target of `dbt_project/profiles.yml` builds `data/dev.duckdb` by
default, and this command fills it with a byte copy of the published file: the inode
open when the copy starts, whole, even if a publish renames a new one over it meanwhile.

    nightshift dev-warehouse            # data/warehouse.duckdb -> data/dev.duckdb
    nightshift dev-warehouse --to /tmp/mine.duckdb   # then DBT_DUCKDB_PATH=/tmp/mine.duckdb
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import BinaryIO

from core import settings
from core.files import write_with

DEV_NAME = "dev.duckdb"  # dbt_project/profiles.yml's default: ../data/dev.duckdb


def dev_path() -> Path:
    """Where the copy goes by default: `dev.duckdb` in the data folder."""
    return settings.data_dir() / DEV_NAME


def copy_published(published: Path, dest: Path) -> Path:
    """Copy the published DuckDB file `published` to `dest` (replaced whole, never
    linked). A published file has no WAL: the publish refuses a build that has one.
    SystemExit when there is none."""
    if not published.is_file():
        raise SystemExit(f"no warehouse at {published}: run make demo (or a nightly) first")
    if dest.resolve() == published.resolve():
        raise SystemExit(f"{dest} is the published warehouse: copy it somewhere else")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_name(dest.name + ".wal").unlink(missing_ok=True)  # an earlier copy's
    with published.open("rb") as source:  # this inode, whatever is renamed over it
        write_with(dest, lambda tmp: _copy_open(source, tmp))
    return dest


def _copy_open(source: BinaryIO, tmp: Path) -> None:
    with tmp.open("wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Copy the published DuckDB warehouse to a private file for dbt by hand "
        "(the dbt project's duckdb target builds data/dev.duckdb by default).",
    )
    parser.add_argument(
        "--to", type=Path, default=None, help=f"the copy (default: <data dir>/{DEV_NAME})"
    )
    args = parser.parse_args(argv)
    if settings.warehouse_url() is not None:
        raise SystemExit(
            "the warehouse is a server (AIRFLOW_CONN_WAREHOUSE): build on your own schemas "
            "with `dbt build --target dev` and DBT_DEV_SCHEMA (dbt_project/README.md)"
        )
    dest = args.to if args.to is not None else dev_path()
    published = settings.warehouse_path()
    copy_published(published, dest)
    size = dest.stat().st_size / 2**20
    print(f"copied {published} to {dest} ({size:.1f} MiB)")
    default = settings.PROJECT_ROOT / "data" / DEV_NAME  # the profile's ../data/dev.duckdb
    override = "" if dest.resolve() == default.resolve() else f"DBT_DUCKDB_PATH={dest.resolve()} "
    print(f"build on it: cd dbt_project && {override}../.venv/bin/dbt build")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
