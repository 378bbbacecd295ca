"""The landing zone: Parquet files per source/table/run, written atomically, with a manifest.

Layout: `<landing_root>/<source>/<table>/run=<run_id>/part-<nnnnn>.parquet` and
`_manifest.json` beside them (plus optional side files such as `_quarantine.jsonl`). A
run directory is built under a temporary name, fsynced, and put into place in one
atomic step (a rename; for a rerun, which replaces its run directory and never appends,
an exchange of the two directories, `_replace_dir`), so readers see the old run or the
new one, never half of one and never none, also after a crash.

Only directories named `run=<run_id>` are runs. Everything else under
`<source>/<table>/` is not a run and readers must skip it: the `_latest.json` pointer
(the newest landed manifest of the table, rewritten atomically after each landing),
`_cache/` (the FX per-day cache), and `.tmp-*` / `.old-*` directories of a landing in
progress. Inside a run directory, the data is `*.parquet`; files starting with `_` are
metadata.

Schema drift: each landing compares its schema with the newest earlier landing of the
same source/table (see `write_landing_table`): new columns are carried and recorded,
lossless widenings are accepted and logged, dropped or otherwise retyped columns fail
the run unless the operator accepts the drift (`ACCEPT_SCHEMA_DRIFT=<table>.<column>`).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core import clock
from core.files import fsync_dir, fsync_file, temp_path, write_json_atomic

_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
MANIFEST_NAME = "_manifest.json"
LATEST_POINTER_NAME = "_latest.json"
RUN_PREFIX = "run="
DRIFT_SWITCH = "ACCEPT_SCHEMA_DRIFT"  # the operator's setting (core/settings.py)
DRIFT_PARAM = "accept_schema_drift"  # the DAG param of the same meaning

log = logging.getLogger(__name__)


class SchemaDriftError(ValueError):
    """A landed table lost a column or changed a column's type since its previous landing.

    `dropped` is [(column, old_type)], `retyped` is [(column, old_type, new_type)].
    """

    def __init__(
        self,
        *,
        source: str,
        table: str,
        previous_run_id: str | None,
        dropped: list[tuple[str, str]],
        retyped: list[tuple[str, str, str]],
    ) -> None:
        self.source = source
        self.table = table
        self.previous_run_id = previous_run_id
        self.dropped = dropped
        self.retyped = retyped
        problems = [f"column {name!r} ({old}) was dropped" for name, old in dropped]
        problems += [
            f"column {name!r} changed type from {old} to {new}" for name, old, new in retyped
        ]
        self.accept_with = ",".join(
            f"{table}.{name}" for name in [d[0] for d in dropped] + [r[0] for r in retyped]
        )
        self.changes = f"schema drift in {source}/{table} since run={previous_run_id}: " + (
            "; ".join(problems)
        )
        super().__init__(
            self.changes
            + " (not a lossless widening; nothing was landed). If the change is intended "
            f"and downstream is ready, rerun the day with {DRIFT_SWITCH}={self.accept_with} "
            f"(make nightly, or the DAG param {DRIFT_PARAM}; accept_drift= in code): the "
            "drift is then landed and recorded in the manifest and ops.guard_overrides"
        )


class UnlandableValueError(ValueError):
    """A source value that neither reader lands exactly (a date or timestamp outside the
    years 1..9999 or infinite, NaN or too many digits for the landed decimal type, text
    that does not convert): the message names `table.column` and the row's key. A retry
    reads the same value: it must be fixed at the source."""


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


@dataclass(frozen=True)
class LandingTarget:
    """Where one landed run goes: `<landing_root>/<source>/<table_name>/run=<run_id>`."""

    landing_root: Path
    source: str
    table_name: str
    run_id: str

    def run_dir(self) -> Path:
        return run_dir(self.landing_root, self.source, self.table_name, self.run_id)


@dataclass(frozen=True)
class LandingOptions:
    """How a run is landed and what its manifest records beyond the data.

    `cursor_column`: its min and max go into the manifest. `rows_per_file`: Parquet
    parts are cut at this many rows. `extra_manifest`: fields added to the manifest.
    `check_drift` / `accept_drift`: the schema comparison with the previous landing
    (`check_schema_drift`). `extra_files` ({name: bytes}): side files landed in the run
    directory with the data (names start with `_`).
    """

    cursor_column: str | None = None
    rows_per_file: int = 5_000_000
    extra_manifest: Mapping[str, Any] | None = None
    check_drift: bool = True
    accept_drift: DriftAcceptance = False
    extra_files: Mapping[str, bytes] | None = None


@dataclass
class _Parts:
    """The Parquet parts written so far and the cursor's range over their rows."""

    files: list[str] = field(default_factory=list)
    rows: int = 0
    min_cursor: Any = None
    max_cursor: Any = None


def write_landing_table(
    data: pa.Table | Iterable[pa.RecordBatch],
    *,
    schema: pa.Schema,
    target: LandingTarget,
    options: LandingOptions = LandingOptions(),
) -> dict[str, Any]:
    """Write a table (or a stream of record batches) as one landed run; return its manifest.

    Schema drift (`options.check_drift`, on by default) is checked before anything is
    written: the schema is compared, by column name, with the newest earlier landing of
    the same source/table (largest `extracted_at` among the `run=*` manifests, including
    an earlier landing of this same run id, so a rerun after an accepted drift compares
    with the accepted schema). A new column is carried (`added_columns`); a lossless
    widening (numeric(12,2) -> numeric(14,2), int32 -> int64) is landed and listed as
    `widened_columns`; a dropped column or another type change raises
    `SchemaDriftError` and the old run stays, unless `options.accept_drift` covers it
    (True, or `<table>.<column>` / `<table>.*` specs: the operator's
    `ACCEPT_SCHEMA_DRIFT`), then it is landed and recorded as `accepted_drift`. Column
    order does not count. The first landing of a table has nothing to compare with.

    The run directory is built under a temporary name and put into place in one atomic
    step (`_replace_dir`), side files (`options.extra_files`) with it; then
    `<table>/_latest.json` is rewritten to point to it, and with the landing zone on
    object storage the run is committed there.
    """
    _check_extra_file_names(options.extra_files or {})
    drift = _drift_fields(target, schema, options)
    final = target.run_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)  # `.tmp-<run dir>-<hex>`: listings pass over it
    tmp.mkdir()
    try:
        batches = data.to_batches() if isinstance(data, pa.Table) else data
        parts = _write_parts(batches, schema, tmp, options)
        manifest = _manifest(target, schema, parts, tmp, options)
        manifest.update(drift)
        for name, blob in (options.extra_files or {}).items():
            (tmp / name).write_bytes(blob)
        if options.extra_manifest:
            manifest.update(options.extra_manifest)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_latest_pointer(final.parent, manifest)
    _commit_to_store(target, final)
    return manifest


def _check_extra_file_names(extra_files: Mapping[str, bytes]) -> None:
    """Side files are metadata (`_name`) and must not clash with the data or manifest."""
    for name in extra_files:
        if (
            not name.startswith("_")
            or not _SAFE.match(name)
            or name == MANIFEST_NAME
            or name.endswith(".parquet")
        ):
            raise ValueError(f"invalid extra file name {name!r}: use '_name', not parquet")


def _drift_fields(
    target: LandingTarget, schema: pa.Schema, options: LandingOptions
) -> dict[str, Any]:
    """The manifest's drift fields (`check_schema_drift`), or none when not checked."""
    if not options.check_drift:
        return {}
    extra = options.extra_manifest or {}
    scope = DriftScope(
        target.landing_root,
        target.source,
        target.table_name,
        source_identity=extra.get("source_identity"),
        source_id=extra.get("source_id"),
    )
    return check_schema_drift(scope, schema, accept_drift=options.accept_drift)


def _write_parts(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, tmp: Path, options: LandingOptions
) -> _Parts:
    """Stream `batches` into `part-<nnnnn>.parquet` files of at most `rows_per_file` rows
    (an empty run still lands one empty file, so the schema is known downstream)."""
    parts = _Parts()
    writer: pq.ParquetWriter | None = None
    rows_in_file = 0
    cursor = options.cursor_column if options.cursor_column in schema.names else None
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if batch.schema != schema:
                batch = pa.Table.from_batches([batch]).cast(schema).to_batches()[0]
            if writer is None or rows_in_file >= options.rows_per_file:
                if writer is not None:
                    writer.close()
                writer = _open_part(tmp, schema, parts)
                rows_in_file = 0
            writer.write_batch(batch)
            parts.rows += batch.num_rows
            rows_in_file += batch.num_rows
            if cursor is not None:
                _widen_cursor_range(parts, batch.column(schema.get_field_index(cursor)))
    finally:
        if writer is not None:
            writer.close()
    if not parts.files:
        parts.files.append("part-00000.parquet")
        pq.write_table(schema.empty_table(), tmp / parts.files[0], compression="zstd")
    return parts


def _open_part(tmp: Path, schema: pa.Schema, parts: _Parts) -> pq.ParquetWriter:
    name = f"part-{len(parts.files):05d}.parquet"
    parts.files.append(name)
    return pq.ParquetWriter(
        tmp / name, schema, compression="zstd", use_dictionary=_dictionary_columns(schema)
    )


def _widen_cursor_range(parts: _Parts, column: pa.Array) -> None:
    bounds = pc.min_max(column)
    lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
    if lo is not None:
        parts.min_cursor = lo if parts.min_cursor is None else min(parts.min_cursor, lo)
        parts.max_cursor = hi if parts.max_cursor is None else max(parts.max_cursor, hi)


def _manifest(
    target: LandingTarget, schema: pa.Schema, parts: _Parts, tmp: Path, options: LandingOptions
) -> dict[str, Any]:
    """The manifest of the parts in `tmp`: sizes and checksum streamed from the files
    (a 5M-row part is ~100 MB, never held in memory)."""
    size = 0
    checksum = hashlib.sha256()
    for name in parts.files:
        with open(tmp / name, "rb") as part:
            while chunk := part.read(1 << 20):
                size += len(chunk)
                checksum.update(chunk)
    manifest: dict[str, Any] = {
        "source": target.source,
        "table": target.table_name,
        "run_id": target.run_id,
        "rows": parts.rows,
        "bytes": size,
        "files": parts.files,
        "columns": [{"name": f.name, "type": str(f.type)} for f in schema],
        "schema_fingerprint": schema_fingerprint(schema),
        "checksum_sha256": checksum.hexdigest(),
        "cursor_column": options.cursor_column,
        "min_cursor": _jsonable(parts.min_cursor),
        "max_cursor": _jsonable(parts.max_cursor),
        "extracted_at": clock.now().isoformat(),
    }
    if options.extra_files:
        manifest["extra_files"] = sorted(options.extra_files)
    return manifest


def _commit_to_store(target: LandingTarget, final: Path) -> None:
    """With the landing zone on object storage, the local run is only a stage until
    it is committed to the store."""
    store = bound_store(target.landing_root)
    if store is None:
        return
    attempt = store.publish_run(final, target.source, target.table_name, target.run_id)
    log.info(
        "%s/%s run=%s committed to %s (attempt %s)",
        target.source,
        target.table_name,
        target.run_id,
        store.describe(),
        attempt,
    )


def bound_store(landing_root: Path) -> Any:
    """The object store (`settings.landing_store()`) whose local stage is `landing_root`,
    or None: the local landing zone (the default; no network) or
    another folder (e.g. a test's)."""
    from core import settings

    if not settings.landing_url().startswith("s3://"):
        return None

    if Path(landing_root).resolve() != settings.landing_dir():
        return None
    return settings.landing_store()


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode text only: ids and timestamps never repeat enough to gain, and
    trying costs ~3x the write time (measured on 1M orders: 0.66 s -> 0.24 s, 32% smaller)."""
    return [
        f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]


def _replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished run `tmp` at `target` in one atomic step, durably.

    Every file of `tmp` is fsynced, then `tmp` itself. A first landing is one `rename`;
    a rerun exchanges the two directories with `renameat2(RENAME_EXCHANGE)` (Linux,
    one system call: a reader opening `target` sees the old run or the new one, never
    none, and a crash leaves one of them in place), and the old run, now under the
    temporary name, is removed. The parent directory is fsynced after the step, so the
    rename survives a power loss. Where the exchange is not available (not Linux, a
    file system without it), the old run is moved aside and the new one renamed in:
    logged, because readers can then miss the run between the two renames.
    """
    _fsync_tree(tmp)
    parent = target.parent
    if not _exchange(tmp, target):
        try:
            os.rename(tmp, target)  # no run there yet (rename onto a non-empty dir fails)
        except OSError:
            if not target.exists():
                raise
            log.warning(
                "%s: atomic directory exchange unavailable here; replacing the run with two "
                "renames (a reader may briefly see no run)",
                target,
            )
            old = parent / f".old-{target.name}-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            tmp = old
        else:
            tmp = None  # type: ignore[assignment]
    fsync_dir(parent)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap directories `a` and `b` (both must exist): True when done, False
    when `b` does not exist or the exchange is not available (then nothing changed)."""
    global _renameat2
    if not b.exists():
        return False
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.renameat2
                cint, path = ctypes.c_int, ctypes.c_char_p
                fn.argtypes = [cint, path, cint, path, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2 = fn
            except (OSError, AttributeError):  # glibc < 2.28, musl without it
                pass
    if not _renameat2:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # the file system (or kernel) cannot exchange
    if err == errno.ENOENT and not b.exists():
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def _fsync_tree(directory: Path) -> None:
    """fsync every file directly in `directory`, then the directory itself."""
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            fsync_file(Path(entry.path))
    fsync_dir(directory)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str | bool):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def previous_manifest(
    landing_root: Path,
    source: str,
    table_name: str,
    where: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any] | None:
    """The newest landed manifest (by `extracted_at`) of source/table, or None.

    `where`: only manifests it accepts count (on object storage, only the newest
    committed one is looked at: None when `where` refuses it).

    Scans the `run=*` directories (the source of truth; `_latest.json` is only a
    convenience pointer that a crash between the rename and its rewrite could leave
    one run behind). Unreadable manifests are skipped with a warning.
    """
    store = bound_store(landing_root)
    if store is not None:  # the committed runs of the store, not the local stage
        found = store.newest_manifest(
            _check_name("source", source), _check_name("table", table_name)
        )
        return found if found is None or where is None or where(found) else None
    table_dir = (
        Path(landing_root) / _check_name("source", source) / _check_name("table", table_name)
    )
    if not table_dir.is_dir():
        return None
    newest: tuple[datetime, dict[str, Any]] | None = None
    for run in table_dir.iterdir():
        if not run.name.startswith(RUN_PREFIX) or not run.is_dir():
            continue  # _latest.json, _cache/, .tmp-*/.old-* are not runs
        path = run / MANIFEST_NAME
        try:
            manifest = json.loads(path.read_text())
            when = datetime.fromisoformat(manifest["extracted_at"])
            columns = manifest["columns"]
            if not isinstance(columns, list):
                raise TypeError("columns is not a list")
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable manifest %s: %s", path, exc)
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if where is not None and not where(manifest):
            continue
        if newest is None or when > newest[0]:
            newest = (when, manifest)
    return None if newest is None else newest[1]


DriftAcceptance = bool | Iterable[str]


def drift_accepted(accept: DriftAcceptance, table: str, column: str) -> bool:
    """Whether the operator's `accept` covers a change of `table.column`: True (all),
    or specs `<table>.<column>`, `<table>.*` or `*`."""
    if isinstance(accept, bool):
        return accept
    specs = set(accept)
    return bool({"*", f"{table}.*", f"{table}.{column}"} & specs)


_DECIMAL = re.compile(r"^decimal(?:128|256)\((\d+), (-?\d+)\)$")
_INT_BITS = {f"{sign}int{bits}": bits for sign in ("", "u") for bits in (8, 16, 32, 64)}
_FLOAT_BITS = {"halffloat": 16, "float": 32, "double": 64}
_EXACT_IN_DOUBLE = 32  # integers of up to 32 bits are exact in a float64
_TS = re.compile(r"^timestamp\[(s|ms|us|ns)(?:, tz=(.+))?\]$")
_TS_UNITS = ("s", "ms", "us")  # ns narrows the range (years 1677..2262): not lossless


def lossless_widening(old: str, new: str) -> bool:
    """Whether every value of Arrow type `old` (as a manifest writes it) is exact in `new`:
    decimal(p, s) -> decimal(p', s') with s' >= s and p' - s' >= p - s (numeric(12,2) ->
    numeric(14,2)); a wider integer (int32 -> int64, uint32 -> int64); float -> double;
    int8/16/32 -> double; string/binary -> their large forms; a timestamp to a finer
    unit (s -> ms -> us) in the same time zone."""
    if old == new:
        return True
    d_old, d_new = _DECIMAL.match(old), _DECIMAL.match(new)
    if d_old and d_new:
        p, s = int(d_old.group(1)), int(d_old.group(2))
        p2, s2 = int(d_new.group(1)), int(d_new.group(2))
        return s2 >= s and p2 - s2 >= p - s
    if old in _INT_BITS and new in _INT_BITS:
        bits, bits2 = _INT_BITS[old], _INT_BITS[new]
        if old.startswith("u") == new.startswith("u"):
            return bits2 >= bits
        return old.startswith("u") and bits2 > bits  # uint32 -> int64, never int -> uint
    if old in _INT_BITS and new == "double":
        return _INT_BITS[old] <= _EXACT_IN_DOUBLE
    if old in _FLOAT_BITS and new in _FLOAT_BITS:
        return _FLOAT_BITS[new] >= _FLOAT_BITS[old]
    if (old, new) in (("string", "large_string"), ("binary", "large_binary")):
        return True
    t_old, t_new = _TS.match(old), _TS.match(new)
    if t_old and t_new and t_old.group(2) == t_new.group(2):
        units = _TS_UNITS
        if t_old.group(1) in units and t_new.group(1) in units:
            return units.index(t_new.group(1)) >= units.index(t_old.group(1))
    return False


@dataclass(frozen=True)
class DriftScope:
    """The landings a table's schema is compared with: those of `source`/`table_name`
    under `landing_root`, of the same source when `source_identity` is given
    (extract/source_identity.py; `source_id` the URL-derived id)."""

    landing_root: Path
    source: str
    table_name: str
    source_identity: str | None = None
    source_id: str | None = None


def check_schema_drift(
    scope: DriftScope, schema: pa.Schema, *, accept_drift: DriftAcceptance = False
) -> dict[str, Any]:
    """Compare `schema` with the previous landing; return the manifest's drift fields.

    With a `scope.source_identity`, the previous landing is the newest one of the same
    source: one landed from another source is a switch of source, logged as such and
    never drift (the first landing from a source has nothing to compare with). Manifests
    written before identities existed count as their URL-derived `source_id`.

    A retyped column whose new type holds every value of the old one exactly
    (`lossless_widening`, e.g. numeric(12,2) -> numeric(14,2)) is accepted and logged,
    and listed as `widened_columns`. Any other change (a dropped column, a narrowing or
    a change of kind) raises SchemaDriftError naming the exact change and the switch,
    unless `accept_drift` covers it (True: all; or `<table>.<column>` / `<table>.*`
    specs, see `drift_accepted`): then it is logged and listed as `accepted_drift`.
    """
    source, table_name = scope.source, scope.table_name
    previous, switched_from = _previous_landing(scope)
    fields: dict[str, Any] = {
        "previous_run_id": None if previous is None else previous.get("run_id"),
        "added_columns": [],
    }
    if switched_from is not None:
        fields["source_switched_from"] = switched_from
    if previous is None:
        return fields
    changes = _column_changes(previous["columns"], schema)
    fields["added_columns"] = changes.added
    _log_carried(source, table_name, fields["previous_run_id"], changes)
    if changes.widened:
        fields["widened_columns"] = [
            {"name": n, "old_type": o, "new_type": t} for n, o, t in changes.widened
        ]
    if changes.dropped or changes.retyped:
        fields["accepted_drift"] = _accepted_drift(
            source, table_name, fields["previous_run_id"], changes, accept_drift
        )
    return fields


def _previous_landing(scope: DriftScope) -> tuple[dict[str, Any] | None, str | None]:
    """The table's previous landing from the same source, and the source it was last
    landed from when that was another one (a switch, logged; else None)."""
    from extract.source_identity import same_source

    landing_root, source, table_name = scope.landing_root, scope.source, scope.table_name
    source_identity, source_id = scope.source_identity, scope.source_id
    previous = previous_manifest(landing_root, source, table_name)
    if previous is None or same_source(previous, source_identity, source_id):
        return previous, None
    switched_from = previous.get("source_identity") or previous.get("source_id")
    log.warning(
        "source switched: %s/%s was last landed (run=%s) from source %s, now from %s; "
        "its schema is compared with this source's own previous landing, if any",
        source,
        table_name,
        previous.get("run_id"),
        switched_from,
        source_identity,
    )
    own = previous_manifest(
        landing_root,
        source,
        table_name,
        where=lambda m: same_source(m, source_identity, source_id),
    )
    return own, switched_from


@dataclass(frozen=True)
class _ColumnChanges:
    """A landing's columns against the previous landing's: `added` as the manifest lists
    them ({name, type}), `dropped` (name, type), `retyped` (name, old, new) other than
    the lossless `widened` ones."""

    added: list[dict[str, str]]
    dropped: list[tuple[str, str]]
    retyped: list[tuple[str, str, str]]
    widened: list[tuple[str, str, str]]


def _column_changes(previous_columns: list[dict[str, str]], schema: pa.Schema) -> _ColumnChanges:
    old = {c["name"]: c["type"] for c in previous_columns}
    new = {f.name: str(f.type) for f in schema}
    retyped = [(n, t, new[n]) for n, t in old.items() if n in new and new[n] != t]
    widened = [(n, o, t) for n, o, t in retyped if lossless_widening(o, t)]
    return _ColumnChanges(
        added=[{"name": n, "type": t} for n, t in new.items() if n not in old],
        dropped=[(n, t) for n, t in old.items() if n not in new],
        retyped=[r for r in retyped if r not in widened],
        widened=widened,
    )


def _log_carried(source: str, table_name: str, prev_run: Any, changes: _ColumnChanges) -> None:
    """Log the changes landed without asking: new columns and lossless widenings."""
    if changes.added:
        log.warning(
            "%s/%s: new column(s) since run=%s carried: %s",
            source,
            table_name,
            prev_run,
            ", ".join(f"{c['name']} ({c['type']})" for c in changes.added),
        )
    if changes.widened:
        log.warning(
            "%s/%s: lossless widening since run=%s accepted: %s",
            source,
            table_name,
            prev_run,
            "; ".join(f"column {n!r} from {o} to {t}" for n, o, t in changes.widened),
        )


def _accepted_drift(
    source: str,
    table_name: str,
    prev_run: Any,
    changes: _ColumnChanges,
    accept_drift: DriftAcceptance,
) -> dict[str, Any]:
    """The dropped and retyped columns as the manifest's `accepted_drift`, when the
    operator accepted every one of them; else SchemaDriftError naming the others."""
    dropped, retyped = changes.dropped, changes.retyped
    refused = SchemaDriftError(
        source=source,
        table=table_name,
        previous_run_id=prev_run,
        dropped=[d for d in dropped if not drift_accepted(accept_drift, table_name, d[0])],
        retyped=[r for r in retyped if not drift_accepted(accept_drift, table_name, r[0])],
    )
    if refused.dropped or refused.retyped:
        raise refused
    accepted = SchemaDriftError(
        source=source, table=table_name, previous_run_id=prev_run, dropped=dropped, retyped=retyped
    )
    log.warning("accepted by the operator (%s): %s", DRIFT_SWITCH, accepted.changes)
    return {
        "dropped": [{"name": n, "type": t} for n, t in dropped],
        "retyped": [{"name": n, "old_type": o, "new_type": t} for n, o, t in retyped],
    }


def _write_latest_pointer(table_dir: Path, manifest: dict[str, Any]) -> None:
    pointer = {
        "run_id": manifest["run_id"],
        "run_dir": f"{RUN_PREFIX}{manifest['run_id']}",
        "extracted_at": manifest["extracted_at"],
        "schema_fingerprint": manifest["schema_fingerprint"],
        "columns": manifest["columns"],
    }
    write_json_atomic(table_dir / LATEST_POINTER_NAME, pointer, sync_dir=True)


def read_latest_pointer(landing_root: Path, source: str, table_name: str) -> dict[str, Any] | None:
    """The `_latest.json` pointer of source/table (newest landing), or None."""
    path = Path(landing_root) / source / table_name / LATEST_POINTER_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_manifest(landing_root: Path, source: str, table_name: str, run_id: str) -> dict:
    path = run_dir(landing_root, source, table_name, run_id) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no landed run for {source}/{table_name} run={run_id}: {path}")
    return json.loads(path.read_text())
