"""Load landed Parquet runs into the warehouse `raw` schema (DuckDB).

Each `source/table` is replaced by the files of one landing run, all tables in one
transaction: either every table is replaced or none is.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

# Whitelists: identifiers are never taken from input unchecked.
KNOWN_TABLES: dict[str, tuple[str, ...]] = {
    "source_db": ("users", "products", "orders", "order_items"),
    "payments_api": ("payments", "fx_rates"),
}
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


class LoadError(RuntimeError):
    """A run cannot be loaded; the message names the source/table and path."""


def _parse_key(key: str) -> tuple[str, str]:
    source, sep, table = key.partition("/")
    if not sep or source not in KNOWN_TABLES or table not in KNOWN_TABLES[source]:
        valid = ", ".join(f"{s}/{t}" for s, ts in KNOWN_TABLES.items() for t in ts)
        raise LoadError(f"unknown source/table {key!r}; valid: {valid}")
    return source, table


def run_dir(landing_root: Path, source: str, table: str, run_id: str) -> Path:
    """Directory of one landing run: `<landing>/<source>/<table>/run=<run_id>`."""
    if not _RUN_ID_RE.match(run_id) or ".." in run_id:
        raise LoadError(f"invalid run id {run_id!r} for {source}/{table}")
    return Path(landing_root) / source / table / f"run={run_id}"


def load_raw(warehouse_path: Path, landing_root: Path, run_ids: dict[str, str]) -> dict[str, int]:
    """Replace `raw.<table>` with the Parquet files of the given run, per source/table.

    `run_ids` maps "source/table" (e.g. "source_db/orders") to a run id. All tables
    are replaced in a single transaction. Returns the row count per table name.
    """
    if not run_ids:
        raise LoadError("load_raw: no source/table given")
    plan: list[tuple[str, str, str]] = []  # (table, glob, run_id)
    seen: set[str] = set()
    for key, run_id in run_ids.items():
        source, table = _parse_key(key)
        if table in seen:
            raise LoadError(f"table {table!r} given twice")
        seen.add(table)
        directory = run_dir(landing_root, source, table, run_id).resolve()
        if not directory.is_dir():
            raise LoadError(f"{source}/{table}: run directory {directory} does not exist")
        if not any(directory.glob("*.parquet")):
            raise LoadError(f"{source}/{table}: run directory {directory} has no .parquet file")
        plan.append((table, str(directory / "*.parquet"), run_id))

    counts: dict[str, int] = {}
    warehouse_path = Path(warehouse_path)
    warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(warehouse_path))
    try:
        con.execute("SET TimeZone='UTC'")
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("CREATE SCHEMA IF NOT EXISTS raw")
            for table, pattern, run_id in plan:
                # table is whitelisted above; values are bound parameters
                try:
                    con.execute(
                        f'CREATE OR REPLACE TABLE raw."{table}" AS '
                        "SELECT *, CAST(? AS VARCHAR) AS _run_id, now() AS _loaded_at "
                        "FROM read_parquet(?, union_by_name = true, hive_partitioning = false)",
                        [run_id, pattern],
                    )
                except duckdb.Error as exc:
                    raise LoadError(f"raw.{table}: loading {pattern} failed: {exc}") from exc
                row = con.execute(f'SELECT count(*) FROM raw."{table}"').fetchone()
                counts[table] = int(row[0]) if row else 0
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()
    for table, n in counts.items():
        log.info("loaded raw.%s: %d rows", table, n)
    return counts
