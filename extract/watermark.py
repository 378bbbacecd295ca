"""Durable extract watermarks, kept in the warehouse beside the data they describe.

A watermark is the upper bound of the extract window of the last run whose landed
files were merged into the warehouse. It is written by the loader in the same
transaction as the merge (`record_loaded`), so the data and the watermark can never
disagree: a run killed after extracting but before loading leaves the old watermark,
and the next run reads that window again (the merge is an idempotent upsert).
Not in Airflow XCom or Variables: those are not transactional with the data.

The readers (`last_watermark`, `last_loaded_shard_map`, `last_loaded_source_id`) take a
DuckDB file path (as the nightly passes) or any `warehouse.backends.Warehouse`, and read
its published `ops.loaded_runs` through `read_arrow` (read-only on a DuckDB file). The
manifest is JSON on every backend; the readers take its fields out as text
(`manifest -> 'key'`, `->>`, the same on DuckDB and PostgreSQL) and parse them in Python.
No warehouse yet, or no table, means no watermark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import ops


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
    # When that window was read (its run's clock: the manifest's `extracted_at`), if known.
    extracted_at: datetime | None = None


def _session(con: Any) -> Any:
    """A `warehouse.backends` Session, or one wrapping a bare DuckDB connection."""
    from warehouse.backends.duckdb import as_session

    return as_session(con)


def ensure_schema(con: Any) -> None:
    """Create `ops.loaded_runs` (idempotent) through a warehouse Session or on a DuckDB
    connection."""
    ops.create(_session(con), "loaded_runs")


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


def _published_loaded_runs(where: Any) -> Any:
    """The warehouse (`as_warehouse`) when its published state has `ops.loaded_runs`,
    else None (no warehouse yet: a DuckDB file that does not exist, or no table)."""
    from warehouse.backends import as_warehouse

    if where is None:
        return None
    wh = as_warehouse(where)
    if wh.kind == "duckdb" and not Path(wh.path).exists():
        return None
    found = wh.read_arrow(
        "select count(*) as n from information_schema.tables "
        "where table_schema = 'ops' and table_name = 'loaded_runs'"
    )
    return wh if found.column(0)[0].as_py() else None


def _rows(wh: Any, sql: str, params: list[Any]) -> list[tuple]:
    table = wh.read_arrow(sql, params)
    return list(zip(*(c.to_pylist() for c in table.columns), strict=True))


def _json(text: str | None) -> Any:
    """A JSON value read as text (`cast(manifest -> 'key' as text)`), None when absent."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _instant(value: Any) -> datetime | None:
    """A manifest's cursor as an instant: an ISO string (no zone: UTC), else None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def last_watermark(where: Any, source: str, table: str, shard: str = "") -> Watermark | None:
    """The newest loaded window of (source, table, shard), or None before the first load.

    `where`: a DuckDB file path or a `Warehouse` (its published `ops.loaded_runs`)."""
    wh = _published_loaded_runs(where)
    if wh is None:
        return None
    rows = _rows(
        wh,
        "select run_id, window_end, cursor_key, cast(manifest -> 'extracted_at' as text) "
        "from {ops}.loaded_runs "
        "where source = ? and table_name = ? and shard = ? and window_end is not null "
        "order by window_end desc, loaded_at desc limit 1",
        [source, table, shard],
    )
    if not rows:
        return None
    run_id, window_end, cursor_key, extracted_at = rows[0]
    cursors = _rows(
        wh,
        "select distinct cast(manifest -> 'max_cursor' as text) from {ops}.loaded_runs "
        "where source = ? and table_name = ? and shard = ?",
        [source, table, shard],
    )
    instants = [i for (text,) in cursors if (i := _instant(_json(text))) is not None]
    return Watermark(
        source,
        table,
        shard,
        run_id,
        window_end,
        cursor_key,
        max(instants, default=None),
        _instant(_json(extracted_at)),
    )


def last_loaded_shard_map(where: Any, source: str, table: str, shard: str) -> dict[str, Any] | None:
    """The `shard_map` recorded in the manifest of the newest loaded extract of (source,
    table, shard), as plain data (`ShardMap.to_public_dict()`), or None when that shard
    was never loaded or its manifest has no map (docs/sharding.md: such a shard is read
    in full). "Newest" is the same run `last_watermark` picks. `where`: a DuckDB file
    path or a `Warehouse`.
    """
    wh = _published_loaded_runs(where)
    if wh is None:
        return None
    rows = _rows(
        wh,
        "select cast(manifest -> 'shard_map' as text) from {ops}.loaded_runs "
        "where source = ? and table_name = ? and shard = ? "
        "order by window_end desc nulls last, loaded_at desc limit 1",
        [source, table, shard],
    )
    value = _json(rows[0][0]) if rows else None
    return value if isinstance(value, dict) else None


def last_loaded_source_id(where: Any, source: str, table: str) -> str | None:
    """The `source_id` recorded with the newest loaded extract of (source, table), if any.
    `where`: a DuckDB file path or a `Warehouse`."""
    wh = _published_loaded_runs(where)
    if wh is None:
        return None
    rows = _rows(
        wh,
        "select manifest ->> 'source_id' from {ops}.loaded_runs "
        "where source = ? and table_name = ? order by loaded_at desc limit 1",
        [source, table],
    )
    return rows[0][0] if rows else None


def last_loaded_manifest(where: Any, source: str, table: str) -> dict[str, Any] | None:
    """The manifest of the newest loaded extract of (source, table), as plain data, or
    None. `where`: a DuckDB file path or a `Warehouse`."""
    wh = _published_loaded_runs(where)
    if wh is None:
        return None
    rows = _rows(
        wh,
        "select cast(manifest as text) from {ops}.loaded_runs "
        "where source = ? and table_name = ? order by loaded_at desc limit 1",
        [source, table],
    )
    value = _json(rows[0][0]) if rows else None
    return value if isinstance(value, dict) else None


def loaded_max_cursor_since_full(where: Any, source: str, table: str) -> datetime | None:
    """The newest cursor value loaded for (source, table) since its last full load (the
    full load included), or None: what the source held at least once. Loads before the
    last full one (e.g. of a source switched away from) do not count."""
    wh = _published_loaded_runs(where)
    if wh is None:
        return None
    rows = _rows(
        wh,
        "select mode, cast(manifest -> 'max_cursor' as text) from {ops}.loaded_runs "
        "where source = ? and table_name = ? and shard = '' order by loaded_at",
        [source, table],
    )
    newest: datetime | None = None
    for mode, text in rows:
        if mode == "full":
            newest = None
        instant = _instant(_json(text))
        if instant is not None and (newest is None or instant > newest):
            newest = instant
    return newest
