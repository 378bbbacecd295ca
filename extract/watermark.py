"""Durable extract watermarks, kept in the warehouse beside the data they describe.

A watermark is the upper bound of the extract window of the last run whose landed
files were merged into the warehouse. It is written by the loader in the same DuckDB
transaction as the merge (`record_loaded`), so the data and the watermark can never
disagree: a run killed after extracting but before loading leaves the old watermark,
and the next run reads that window again (the merge is an idempotent upsert).
Not in Airflow XCom or Variables: those are not transactional with the data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

_DDL = """
create schema if not exists {ops};
create table if not exists {ops}.loaded_runs (
    source varchar not null,
    table_name varchar not null,
    shard varchar not null default '',
    run_id varchar not null,
    mode varchar not null,
    window_start timestamptz,
    window_end timestamptz,
    cursor_key varchar,
    rows bigint not null,
    manifest json,
    loaded_at timestamptz not null default now()
);
"""


@dataclass(frozen=True)
class Watermark:
    """Where the next incremental window starts (before the overlap is applied)."""

    source: str
    table: str
    shard: str
    run_id: str
    window_end: datetime | None
    cursor_key: str | None
    # The newest cursor value ever loaded for the table (from the manifests), if any.
    max_cursor: datetime | None = None


def _session(con: Any) -> Any:
    """A `warehouse.backends` Session, or one wrapping a bare DuckDB connection."""
    from warehouse.backends.duckdb import as_session

    return as_session(con)


def ensure_schema(con: Any) -> None:
    """Create `ops.loaded_runs` (idempotent) through a warehouse Session or on a DuckDB
    connection."""
    _session(con).execute(_DDL)


def record_loaded(
    con: Any,
    *,
    source: str,
    table: str,
    run_id: str,
    manifest: dict[str, Any],
    shard: str = "",
) -> None:
    """Record that a landed run was merged; call inside the loader's transaction (`con`:
    its warehouse Session, or a DuckDB connection)."""
    con = _session(con)
    ensure_schema(con)
    con.execute(
        "insert into {ops}.loaded_runs (source, table_name, shard, run_id, mode, window_start, "
        "window_end, cursor_key, rows, manifest) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            source,
            table,
            shard,
            run_id,
            manifest.get("mode", "full_refresh"),
            manifest.get("window_start"),
            manifest.get("window_end"),
            None if manifest.get("cursor_key") is None else str(manifest.get("cursor_key")),
            int(manifest.get("rows", 0)),
            json.dumps(manifest, default=str),
        ],
    )


@contextmanager
def _loaded_runs(warehouse_path: Path | None) -> Iterator[Any]:
    """A read-only connection when the warehouse has `ops.loaded_runs`, else None."""
    import duckdb

    if warehouse_path is None or not Path(warehouse_path).exists():
        yield None
        return
    con = duckdb.connect(str(warehouse_path), read_only=True)
    try:
        exists = con.execute(
            "select count(*) from information_schema.tables "
            "where table_schema = 'ops' and table_name = 'loaded_runs'"
        ).fetchone()[0]
        yield con if exists else None
    finally:
        con.close()


def last_watermark(
    warehouse_path: Path, source: str, table: str, shard: str = ""
) -> Watermark | None:
    """The newest loaded window of (source, table, shard), or None before the first load."""
    with _loaded_runs(warehouse_path) as con:
        if con is None:
            return None
        row = con.execute(
            "select run_id, window_end, cursor_key from ops.loaded_runs "
            "where source = ? and table_name = ? and shard = ? and window_end is not null "
            "order by window_end desc, loaded_at desc limit 1",
            [source, table, shard],
        ).fetchone()
        if row is None:
            return None
        max_cursor = con.execute(
            "select max(try_cast(json_extract_string(manifest, '$.max_cursor') "
            "as timestamptz)) from ops.loaded_runs "
            "where source = ? and table_name = ? and shard = ?",
            [source, table, shard],
        ).fetchone()[0]
    return Watermark(source, table, shard, row[0], row[1], row[2], max_cursor)


def last_loaded_shard_map(
    warehouse_path: Path | None, source: str, table: str, shard: str
) -> dict[str, Any] | None:
    """The `shard_map` recorded in the manifest of the newest loaded extract of (source,
    table, shard), as plain data (`ShardMap.to_public_dict()`), or None when that shard
    was never loaded or its manifest has no map (docs/sharding.md: such a shard is read
    in full). "Newest" is the same run `last_watermark` picks.
    """
    with _loaded_runs(warehouse_path) as con:
        if con is None:
            return None
        row = con.execute(
            "select json_extract(manifest, '$.shard_map') from ops.loaded_runs "
            "where source = ? and table_name = ? and shard = ? "
            "order by window_end desc nulls last, loaded_at desc limit 1",
            [source, table, shard],
        ).fetchone()
    if row is None or row[0] is None:
        return None
    value = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    return value if isinstance(value, dict) else None


def last_loaded_source_id(warehouse_path: Path | None, source: str, table: str) -> str | None:
    """The `source_id` recorded with the newest loaded extract of (source, table), if any."""
    with _loaded_runs(warehouse_path) as con:
        if con is None:
            return None
        row = con.execute(
            "select json_extract_string(manifest, '$.source_id') from ops.loaded_runs "
            "where source = ? and table_name = ? order by loaded_at desc limit 1",
            [source, table],
        ).fetchone()
    return row[0] if row else None
