"""The landed side of the hard-delete check: key-range summaries and which keys a run carries.

A `reconcile_deletes` table with a single integer key lands, besides its rows,

- `<table>__key_ranges`: the source's per-bucket summaries in the run's snapshot
  (`core.key_summary`: columns b, n, s1, s2) and a column `keys` saying whether the run
  landed that bucket's keys; its manifest records the bucket width, whether every
  bucket's keys landed (`keys`: "all" or "changed"), the run whose summaries it was
  compared with (`previous_run_id`, `previous_checksum`) and `key_check_id`;
- `<table>__keys`: the keys of the buckets whose summary differs from the previous
  landed summaries (all keys on the first night, after a full read, when the previous
  run predates this format, or when the loader asked for them), with the same
  `key_check_id`.

The loader follows `previous_run_id` back from the run it merges to find, for every
bucket where the warehouse and the source disagree, a run that landed that bucket's
keys while the source's summary was the same (warehouse/load.py). When it cannot (a
landed run was lost or pruned) it fails naming the table and the buckets, and asks for a
full key set here (`request_full_key_set`): the next extract of the table lands every
key (`full_key_set_requested`) and clears the request once they have landed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core import clock
from core.files import write_json_atomic

log = logging.getLogger(__name__)

SOURCE = "source_db"
RANGES_SUFFIX = "__key_ranges"
KEYS_SUFFIX = "__keys"
REQUEST_NAME = "_full_key_set_requested.json"  # not a run: readers skip `_` names
RANGES_SCHEMA = pa.schema(
    [
        pa.field("b", pa.int64()),
        pa.field("n", pa.int64()),
        pa.field("s1", pa.int64()),
        pa.field("s2", pa.int64()),
        pa.field("keys", pa.bool_()),
    ]
)

Summary = tuple[int, int, int]


def ranges_dir(landing_root: Path, table: str) -> Path:
    """`<landing>/source_db/<table>__key_ranges`: the runs of a table's summaries."""
    return Path(landing_root) / SOURCE / f"{table}{RANGES_SUFFIX}"


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """A run directory's manifest, or None when it is missing or unreadable."""
    try:
        manifest = json.loads((directory / "_manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def read_summaries(directory: Path) -> pa.Table:
    """The landed summaries of one run (columns of `RANGES_SCHEMA`)."""
    return pq.read_table(directory, schema=RANGES_SCHEMA)


def summaries_by_bucket(table: pa.Table) -> dict[int, Summary]:
    """{bucket: (n, s1, s2)}, empty buckets left out (absent means empty)."""
    b, n, s1, s2 = (table.column(c).to_pylist() for c in ("b", "n", "s1", "s2"))
    return {b[i]: (n[i], s1[i], s2[i]) for i in range(len(b)) if n[i]}


def previous_summaries(
    landing_root: Path, table: str, run_id: str, key: str, width: int
) -> tuple[dict[str, Any], dict[int, Summary]] | None:
    """The newest landed summaries of `table` from another run than `run_id` (the same
    key and bucket width): (its manifest, its summaries by bucket), or None."""
    root = ranges_dir(landing_root, table)
    if not root.is_dir():
        return None
    newest: tuple[datetime, Path, dict[str, Any]] | None = None
    for run in root.iterdir():
        if not run.name.startswith("run=") or not run.is_dir():
            continue
        manifest = read_manifest(run)
        if manifest is None or manifest.get("run_id") == run_id:
            continue
        if manifest.get("key") != key or manifest.get("width") != width:
            continue
        try:
            when = datetime.fromisoformat(manifest["extracted_at"])
        except (KeyError, TypeError, ValueError):
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if newest is None or when > newest[0]:
            newest = (when, run, manifest)
    if newest is None:
        return None
    try:
        summaries = summaries_by_bucket(read_summaries(newest[1]))
    except (OSError, pa.ArrowException) as exc:
        log.warning("%s: ignoring unreadable key-range summaries %s: %s", table, newest[1], exc)
        return None
    return newest[2], summaries


def request_path(landing_root: Path, table: str) -> Path:
    """Where the loader's request for a full key set of `table` lives in the landing."""
    return ranges_dir(landing_root, table) / REQUEST_NAME


def full_key_set_requested(landing_root: Path, table: str) -> dict[str, Any] | None:
    """The loader's request for a full key set of `table`, or None."""
    path = request_path(landing_root, table)
    try:
        request = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"reason": f"unreadable request {path}"}
    return request if isinstance(request, dict) else {"reason": f"unreadable request {path}"}


def request_full_key_set(
    landing_root: Path, table: str, run_id: str, buckets: Iterable[int], reason: str
) -> Path:
    """Ask the next extract of `table` to land every key (the loader, when a differing
    bucket is covered by no landed run)."""
    path = request_path(landing_root, table)
    write_json_atomic(
        path,
        {
            "table": table,
            "run_id": run_id,
            "buckets": sorted(buckets)[:100],
            "reason": reason,
            "requested_at": clock.now().isoformat(),
        },
    )
    return path


def clear_full_key_set_request(landing_root: Path, table: str) -> None:
    """A full key set of `table` has landed: the request is met."""
    request_path(landing_root, table).unlink(missing_ok=True)
