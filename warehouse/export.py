"""Export the published `analytics.*` tables as Parquet files, for readers that do not
query the warehouse (a BI extract, another team's lake).

Run by the `analytics_export` DAG each time the nightly's publish changed them (Airflow
Assets, pipeline/assets.py). Each file is written whole beside its target, fsynced and
renamed into place: a reader sees the previous export or the new one, never a half.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.files import write_with
from core.tables import ANALYTICS_TABLES

#: Row order of each export (its key), so two exports of the same data are identical.
_ORDER = {"sales_summary": "date, region", "daily_sales": "date, region, category"}


def _read_table(warehouse: Any, table: str, build: Any = None) -> Any:
    sql = f"select * from {{analytics}}.{table} order by {_ORDER[table]}"
    return warehouse.read_arrow(sql, build=build)


def changed_analytics_tables(warehouse: Any, build: Any) -> list[str]:
    """The published tables whose rows differ between the build and what is published now
    (read before the publish swaps them): the ones whose Asset the publish updates.

    A table the published warehouse cannot give (the first run, an older release) counts
    as changed: when in doubt, downstream runs once too often rather than not at all. A
    table the build does not hold (a publish of raw tables only) is not announced."""
    changed = []
    for table in ANALYTICS_TABLES:
        try:
            new = _read_table(warehouse, table, build)
        except Exception:  # a build that does not make it (steps run by hand): no news
            continue
        try:
            old = _read_table(warehouse, table)
        except Exception:  # no published warehouse, or no such table in it yet
            changed.append(table)
            continue
        if not (old.schema.equals(new.schema) and old.equals(new)):
            changed.append(table)
    return changed


def export_analytics(
    warehouse: Any,
    export_dir: Path,
    *,
    run_id: str | None = None,
    tables: Sequence[str] = ANALYTICS_TABLES,
) -> dict[str, int]:
    """Write `<export_dir>/<table>.parquet` for each published table, then
    `manifest.json` (rows per table, the run that published them); return the rows."""
    import pyarrow.parquet as pq

    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    for table in tables:
        if table not in _ORDER:
            raise ValueError(f"{table!r} is not a published table ({', '.join(_ORDER)})")
        data = _read_table(warehouse, table)
        write_with(
            export_dir / f"{table}.parquet", lambda p, d=data: pq.write_table(d, p), unique=False
        )
        rows[table] = data.num_rows
    manifest = json.dumps({"run_id": run_id, "rows": rows}, indent=2).encode()
    write_with(export_dir / "manifest.json", lambda p: p.write_bytes(manifest))
    return rows
