"""The landing zone: Parquet files per source/table/run, written atomically, with a manifest.

Layout: `<landing_root>/<source>/<table>/run=<run_id>/part-<nnnnn>.parquet` and
`_manifest.json` beside them. A run directory is built under a temporary name and
renamed into place, so readers see the old run or the new one, never half of one; a
rerun of the same run id replaces its directory (never appends).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
MANIFEST_NAME = "_manifest.json"


def _check_name(kind: str, value: str) -> str:
    if not _SAFE.match(value):
        raise ValueError(f"invalid {kind} {value!r}: use letters, digits, '_', '-', '.', ':'")
    return value


def run_dir(landing_root: Path, source: str, table_name: str, run_id: str) -> Path:
    """Directory of one run of one landed table."""
    return (
        Path(landing_root)
        / _check_name("source", source)
        / _check_name("table", table_name)
        / f"run={_check_name('run id', run_id)}"
    )


def schema_fingerprint(schema: pa.Schema) -> str:
    text = ";".join(f"{f.name}:{f.type}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_landing_table(
    data: pa.Table | Iterable[pa.RecordBatch],
    *,
    schema: pa.Schema,
    landing_root: Path,
    source: str,
    table_name: str,
    run_id: str,
    cursor_column: str | None = None,
    rows_per_file: int = 5_000_000,
    extra_manifest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a table (or a stream of record batches) as one landed run; return its manifest."""
    target = run_dir(landing_root, source, table_name, run_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    batches = data.to_batches() if isinstance(data, pa.Table) else data
    files: list[str] = []
    rows = 0
    min_cursor: Any = None
    max_cursor: Any = None
    checksum = hashlib.sha256()
    writer: pq.ParquetWriter | None = None
    rows_in_file = 0
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if batch.schema != schema:
                batch = pa.Table.from_batches([batch]).cast(schema).to_batches()[0]
            if writer is None or rows_in_file >= rows_per_file:
                if writer is not None:
                    writer.close()
                name = f"part-{len(files):05d}.parquet"
                files.append(name)
                writer = pq.ParquetWriter(tmp / name, schema, compression="zstd")
                rows_in_file = 0
            writer.write_batch(batch)
            rows += batch.num_rows
            rows_in_file += batch.num_rows
            if cursor_column and cursor_column in schema.names:
                col = batch.column(schema.get_field_index(cursor_column))
                import pyarrow.compute as pc

                bounds = pc.min_max(col)
                lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
                if lo is not None:
                    min_cursor = lo if min_cursor is None else min(min_cursor, lo)
                    max_cursor = hi if max_cursor is None else max(max_cursor, hi)
        if writer is not None:
            writer.close()
            writer = None
        if not files:  # an empty run still lands one file, so the schema is known downstream
            name = "part-00000.parquet"
            files.append(name)
            pq.write_table(schema.empty_table(), tmp / name, compression="zstd")
        size = 0
        for name in files:
            blob = (tmp / name).read_bytes()
            size += len(blob)
            checksum.update(blob)
        manifest: dict[str, Any] = {
            "source": source,
            "table": table_name,
            "run_id": run_id,
            "rows": rows,
            "bytes": size,
            "files": files,
            "columns": [{"name": f.name, "type": str(f.type)} for f in schema],
            "schema_fingerprint": schema_fingerprint(schema),
            "checksum_sha256": checksum.hexdigest(),
            "cursor_column": cursor_column,
            "min_cursor": _jsonable(min_cursor),
            "max_cursor": _jsonable(max_cursor),
            "extracted_at": datetime.now(UTC).isoformat(),
        }
        if extra_manifest:
            manifest.update(extra_manifest)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _replace_dir(tmp, target)
        return manifest
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, target: Path) -> None:
    """Swap `tmp` into `target`: the old run is moved aside first, then removed."""
    old = None
    if target.exists():
        old = target.parent / f".old-{target.name}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str | bool):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def read_manifest(landing_root: Path, source: str, table_name: str, run_id: str) -> dict:
    path = run_dir(landing_root, source, table_name, run_id) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no landed run for {source}/{table_name} run={run_id}: {path}")
    return json.loads(path.read_text())
