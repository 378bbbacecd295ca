"""Merge landed runs into the warehouse: `raw.<table>` is the current state of each source.

Per docs/extract-design.md, one warehouse transaction per load does everything or nothing:
each landed delta is upserted into `raw.<table>` by key (the newest cursor wins, the
delta deduplicated first; new source columns are added), key sets delete the rows gone
from the source (logged in `ops.deleted_rows`; found through per key-range summaries,
only the ranges holding a delete compared key by key; with the source's own bucket
summaries, `_find_gone_by_summaries`, the landed key set holds the changed buckets only), the business days the changes
touch are recorded in `ops.restated_days`, and the watermark of every merged run is recorded
(`extract.watermark.record_loaded`). Loading the same run again changes nothing.

The plan (which landed runs, keys, cursors, key sets, shards) is engine-free; the engine
work goes through a `warehouse.backends` `Session` (`Warehouse.transaction`): staging the
Parquet, the merge, deletes, guard counts, `ops.*` rows with bound parameters, added and
widened columns. Without a `Warehouse` the loader works on the DuckDB file it is given;
with one (`warehouse=`, `build=`) on that backend's build (DuckDB or PostgreSQL).
"""

from __future__ import annotations

import json
import logging
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from core import clock, key_summary, ops, run_ids
from core import tables as source_tables
from extract import key_check
from extract.watermark import ensure_schema, record_loaded
from warehouse.backends.base import Build, Session, Warehouse
from warehouse.guards import MassDeleteGuard

log = logging.getLogger(__name__)

# Whitelists: identifiers are never taken from input unchecked.
KNOWN_TABLES: dict[str, tuple[str, ...]] = source_tables.SOURCES
DEFAULT_KEYS: dict[str, tuple[str, ...]] = source_tables.KEYS
_META_COLUMNS = ("_run_id", "_loaded_at")

_DEFAULT_GUARD = MassDeleteGuard()


class LoadError(RuntimeError):
    """A run cannot be loaded; the message names the source/table and path."""


@dataclass
class _Part:
    """One landed run of a table: the whole delta, or one physical shard's part of it."""

    shard: str  # ops.loaded_runs.shard: '' for an unsharded source
    directory: Path
    manifest: dict[str, Any]


@dataclass
class _Delta:
    source: str
    table: str
    parts: list[_Part]
    keys: tuple[str, ...]
    cursor: str | None
    # directories of the landed key sets (one per part), when reconciled
    key_sets: list[Path] | None = None
    skipped: bool = False
    # temp table of the keys gone from the source, when the key-range summaries found
    # them (None: the gone rows are found by comparing every key)
    gone: str | None = None
    key_check: dict[str, int] | None = None
    # the landed source summaries of a run whose key set holds the changed buckets' keys
    # only (extract/key_check.py), and the landing they are followed back in
    key_ranges: Path | None = None
    landing_root: Path | None = None
    run_id: str = ""

    @property
    def temp(self) -> str:
        return f"delta__{self.table}"

    @property
    def directory(self) -> Path:
        return self.parts[0].directory

    @property
    def manifest(self) -> dict[str, Any]:
        return self.parts[0].manifest

    @property
    def full_key_set(self) -> bool:
        """Every part is a full extract: together they are the table's whole key set."""
        return all(p.manifest.get("mode") == "full" for p in self.parts)


def run_dir(landing_root: Path, source: str, table: str, run_id: str) -> Path:
    """Directory of one landing run: `<landing>/<source>/<table>/run=<run_id>`."""
    if not run_ids.is_valid(run_id):
        raise LoadError(f"invalid run id {run_id!r} for {source}/{table}")
    return Path(landing_root) / source / table / run_ids.dir_name(run_id)


def _quoted(name: str) -> str:
    """A column name as a DuckDB identifier, quoted: a landed source column may be any
    name the source allows (`order-ref`, spaces, quotes, upper case)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise LoadError(f"invalid column name {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _landed(landing_root: Path, source: str, table: str, run_id: str) -> tuple[Path, dict]:
    directory = run_dir(landing_root, source, table, run_id).resolve()
    if not directory.is_dir():
        raise LoadError(f"{source}/{table}: run directory {directory} does not exist")
    if not any(directory.glob("*.parquet")):
        raise LoadError(f"{source}/{table}: run directory {directory} has no .parquet file")
    manifest_path = directory / "_manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    return directory, manifest


def _plan(landing_root: Path, source: str, tables: tuple[str, ...], run_id: str) -> list[_Delta]:
    if source not in KNOWN_TABLES:
        raise LoadError(f"unknown source {source!r}; valid: {', '.join(KNOWN_TABLES)}")
    plan = []
    for table in tables:
        if table not in KNOWN_TABLES[source]:
            raise LoadError(
                f"unknown table {source}/{table}; valid: {', '.join(KNOWN_TABLES[source])}"
            )
        directory, manifest = _landed(landing_root, source, table, run_id)
        delta = _new_delta(source, table, [_Part("", directory, manifest)])
        if manifest.get("reconcile_deletes"):
            key_set, key_manifest = _landed(landing_root, source, f"{table}__keys", run_id)
            delta.key_sets = [key_set]
            if key_manifest.get("keys") == "changed":
                delta.key_ranges, _ = _landed(
                    landing_root, source, f"{table}{key_check.RANGES_SUFFIX}", run_id
                )
                delta.landing_root, delta.run_id = Path(landing_root), run_id
        plan.append(delta)
    return plan


def _new_delta(source: str, table: str, parts: list[_Part]) -> _Delta:
    manifest = parts[0].manifest
    key = manifest.get("key")  # the extract's TableConfig.key (source_db only)
    keys = (key,) if source == "source_db" and isinstance(key, str) else DEFAULT_KEYS[table]
    cursor = manifest.get("cursor_key") or source_tables.table(table).cursor
    for part in parts[1:]:
        if part.manifest.get("key", manifest.get("key")) != manifest.get("key"):
            raise LoadError(
                f"{source}/{table}: shards disagree on the key "
                f"({manifest.get('key')!r} vs {part.manifest.get('key')!r} in {part.directory})"
            )
    delta = _Delta(source, table, parts, tuple(keys), cursor)
    for name in (*delta.keys, *([cursor] if cursor else [])):
        _quoted(name)
    return delta


def _plan_sharded(
    landing_root: Path, tables: tuple[str, ...], run_id: str, record: dict[str, Any]
) -> list[_Delta]:
    """The deltas of a complete sharded run: per table, every shard's landed part.

    The run record (written by the extract once every shard had landed) names the shards
    and the extract; every part must carry that extract id. Key-set deletes need the
    key set of EVERY shard: when one is missing, the table's deletes are skipped (logged).
    """
    source = "source_db"
    extract_id = record.get("extract_id")
    shards = record.get("shards") or []
    shard_map = record.get("shard_map") or {}
    owners = {s["name"] for s in shard_map.get("shards", []) if s.get("vshards")}
    landed = {s["name"] for s in shards}
    if not shards or landed != owners:
        raise LoadError(
            f"{source} run={run_id}: the run record lists shards {sorted(landed)} but map "
            f"version {shard_map.get('version')} has shards {sorted(owners)}: re-extract it"
        )
    plan = []
    for table in tables:
        if table not in KNOWN_TABLES[source]:
            raise LoadError(
                f"unknown table {source}/{table}; valid: {', '.join(KNOWN_TABLES[source])}"
            )
        parts = []
        for shard in shards:
            directory, manifest = _landed(landing_root, source, table, shard["landing_run_id"])
            if manifest.get("extract_id") != extract_id or manifest.get("shard") != shard["name"]:
                raise LoadError(
                    f"{source}/{table}: {directory} is not part of the extract recorded for "
                    f"run={run_id} (shard {shard['name']!r}, extract {extract_id}): re-extract it"
                )
            parts.append(_Part(shard["name"], directory, manifest))
        delta = _new_delta(source, table, parts)
        if any(p.manifest.get("reconcile_deletes") for p in parts):
            key_sets, missing = [], []
            for shard, part in zip(shards, parts, strict=True):
                keys_dir = run_dir(landing_root, source, f"{table}__keys", shard["landing_run_id"])
                manifest_path = keys_dir / "_manifest.json"
                ok = (
                    part.manifest.get("reconcile_deletes")
                    and any(keys_dir.glob("*.parquet"))
                    and manifest_path.exists()
                    and json.loads(manifest_path.read_text()).get("extract_id") == extract_id
                )
                if ok:
                    key_sets.append(keys_dir.resolve())
                else:
                    missing.append(shard["name"])
            if missing:
                log.warning(
                    "%s/%s run=%s: no key set of this extract from shard(s) %s: deletes are "
                    "skipped this run (they need the key sets of all shards of the same run)",
                    source,
                    table,
                    run_id,
                    ", ".join(missing),
                )
            else:
                delta.key_sets = key_sets
        plan.append(delta)
    return plan


def _columns(s: Session, relation: str) -> dict[str, pa.DataType]:
    return s.table_columns(relation)


def _raw(s: Session, table: str) -> str:
    return s.table("raw", table)


def _temp(name: str) -> str:
    return _quoted(name)


def _manifest(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if value else {}
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _already_loaded(s: Session, delta: _Delta, run_id: str) -> bool:
    """Every part (shard) of the delta was merged already (same run id and checksum).

    A part read in full because the source changed (another source, or one restored to
    an earlier state: `source_changed`) counts only when it is the last load of its
    table: the same rows loaded before the table was loaded from elsewhere (A, then B,
    then A again) must replace raw again."""
    for part in delta.parts:
        checksum = part.manifest.get("checksum_sha256")
        if not checksum:
            return False
        rows = s.fetchall(
            "select manifest from {ops}.loaded_runs where source = ? and table_name = ? "
            "and shard = ? and run_id = ?",
            [delta.source, delta.table, part.shard, run_id],
        )
        if not any(_manifest(r[0]).get("checksum_sha256") == checksum for r in rows):
            return False
        if part.manifest.get("source_changed"):
            newest = s.fetchone(
                "select run_id, manifest from {ops}.loaded_runs where source = ? "
                "and table_name = ? and shard = ? order by loaded_at desc limit 1",
                [delta.source, delta.table, part.shard],
            )
            if newest is None or newest[0] != run_id:
                return False
            if _manifest(newest[1]).get("checksum_sha256") != checksum:
                return False
    return True


def _check_not_stale(s: Session, delta: _Delta, run_id: str) -> None:
    """Refuse a run extracted before one already merged: its key set would be stale.
    Per shard: each database has its own clock."""
    for part in delta.parts:
        window_end = part.manifest.get("window_end")
        if not window_end:
            continue
        row = s.fetchone(
            "select run_id, window_end from {ops}.loaded_runs where source = ? "
            "and table_name = ? and shard = ? and window_end > cast(? as timestamptz) "
            "order by window_end desc limit 1",
            [delta.source, delta.table, part.shard, window_end],
        )
        if row:
            where = f" (shard {part.shard!r})" if part.shard else ""
            raise LoadError(
                f"{delta.source}/{delta.table}{where} run={run_id} was extracted up to "
                f"{window_end}, before the already loaded run {row[0]!r} (up to {row[1]}): "
                "re-extract it"
            )


def _stage(s: Session, delta: _Delta) -> int:
    """The delta as a temp table, one row per key (the newest cursor wins); with shards,
    the union of every shard's part."""
    pattern = ", ".join(str(p.directory / "*.parquet") for p in delta.parts)
    try:
        names = s.stage_parquet(f"{delta.temp}__files", [p.directory for p in delta.parts])
    except LoadError:
        raise
    except Exception as exc:
        raise LoadError(f"raw.{delta.table}: reading {pattern} failed: {exc}") from exc
    missing = [k for k in delta.keys if k not in names]
    if missing:
        raise LoadError(
            f"{delta.source}/{delta.table}: landed run {delta.directory} lacks key column(s) "
            f"{', '.join(missing)}"
        )
    if delta.cursor not in names:
        delta.cursor = None  # e.g. a full-mode table without a cursor: the delta wins
    keys = ", ".join(_quoted(k) for k in delta.keys)
    try:
        s.dedupe(delta.temp, _temp(f"{delta.temp}__files"), names, delta.keys, delta.cursor)
    except Exception as exc:
        raise LoadError(f"raw.{delta.table}: reading {pattern} failed: {exc}") from exc
    if delta.key_sets is not None:
        key_pattern = ", ".join(str(d / "*.parquet") for d in delta.key_sets)
        try:
            if delta.key_ranges is not None:
                _find_gone_by_summaries(s, delta)
            else:
                s.stage_parquet(f"{delta.temp}__keyfiles", delta.key_sets, union_by_name=False)
                if not _find_gone_by_ranges(s, delta):
                    s.create_temp(
                        f"{delta.temp}__keys",
                        f"select distinct {keys} from {_temp(f'{delta.temp}__keyfiles')}",
                    )
        except LoadError:
            raise
        except Exception as exc:
            raise LoadError(f"{delta.table}__keys: reading {key_pattern} failed: {exc}") from exc
    row = s.fetchone(f"select count(*) from {_temp(delta.temp)}")
    return int(row[0]) if row else 0


# Hard deletes by key ranges: the key space is cut into ranges of about RANGE_KEYS keys;
# per range, the source's key set and the warehouse's keys (raw's plus the delta's new
# ones) are summarised as (count, sum, sum of a square hash). Only the ranges whose
# summaries differ are compared key by key: a night without deletes reads no key beyond
# the summaries, a delete in old history is still found (its range's count differs).
RANGE_KEYS = 512
_HASH_P = 2147483629  # a prime below 2**31: the square of a residue fits a bigint
_HASH_Q = 2147483587
_RANGE_ENGINES = {"duckdb": "//", "postgres": "/"}  # exact integer division


def _int_column(columns: dict[str, pa.DataType], name: str) -> bool:
    type_ = columns.get(name)
    return type_ is not None and pa.types.is_integer(type_)


def _warehouse_keys(key: str, raw: str, temp: str) -> str:
    """SQL of the warehouse's keys after the merge: raw's and the delta's new ones."""
    return (
        f"select {key} from {raw} union all select d.{key} from {temp} d "
        f"where not exists (select 1 from {raw} o where o.{key} = d.{key})"
    )


@dataclass(frozen=True)
class _KeyRanges:
    """How `_find_gone_by_ranges` cuts one delta's integer key space: `ranges` ranges of
    `width` keys from `low` (`div`: the engine's exact integer division), over the quoted
    `key` of raw, the staged delta (`temp`) and the landed key set (`keyfiles`)."""

    key: str
    div: str
    raw: str
    temp: str
    keyfiles: str
    low: int
    width: int
    ranges: int
    source_keys: int

    @property
    def bucket(self) -> str:
        """SQL of the range of key `x.<key>`; its parameters are `geometry`."""
        return f"((x.{self.key} - cast(? as bigint)) {self.div} cast(? as bigint))"

    @property
    def geometry(self) -> list[int]:
        return [self.low, self.width]

    @property
    def warehouse_keys(self) -> str:
        return _warehouse_keys(self.key, self.raw, self.temp)

    def summary(self, relation: str) -> str:
        """Per range of `relation`'s keys: (count, sum, sum of a square hash)."""
        residue = f"(x.{self.key} % {_HASH_P})"
        return (
            f"select {self.bucket} as b, count(*) as n, sum(x.{self.key}) as s1, "
            f"sum(({residue} * {residue}) % {_HASH_Q}) as s2 from ({relation}) x group by 1"
        )


def _find_gone_by_ranges(s: Session, delta: _Delta) -> bool:
    """Find the keys gone from the source through per-range summaries into
    `<temp>__gone` (and the compared ranges' source keys into `<temp>__keys`); False
    when this delta needs the key-by-key comparison instead (no raw table yet, a
    composite or non-integer key, a full extract, an engine without exact integer
    division)."""
    ranges = _plan_key_ranges(s, delta)
    if ranges is None:
        return False
    compared = _find_differing_ranges(s, delta, ranges)
    _find_gone_in_ranges(s, delta, ranges, compared)
    _record_range_check(s, delta, ranges, compared)
    return True


def _plan_key_ranges(s: Session, delta: _Delta) -> _KeyRanges | None:
    """The ranges the delta's key space is cut into; None when the ranges do not apply."""
    div = _RANGE_ENGINES.get(getattr(s, "kind", ""))
    if (
        div is None
        or len(delta.keys) != 1
        or delta.full_key_set
        or not s.exists("raw", delta.table)
    ):
        return None
    key = _quoted(delta.keys[0])
    raw, temp = _raw(s, delta.table), _temp(delta.temp)
    keyfiles = _temp(f"{delta.temp}__keyfiles")
    if not all(_int_column(_columns(s, rel), delta.keys[0]) for rel in (raw, temp, keyfiles)):
        return None
    bounds = [
        s.fetchone(f"select min({key}), max({key}), count(*) from {rel}")
        for rel in (keyfiles, raw, temp)
    ]
    lows = [int(b[0]) for b in bounds if b and b[0] is not None]
    highs = [int(b[1]) for b in bounds if b and b[1] is not None]
    if not lows:
        return None
    lo, hi = min(lows), max(highs)
    if hi - lo >= 2**62:  # (key - lo) would overflow a bigint
        return None
    n = max(int(bounds[0][2]), int(bounds[1][2]), 1)
    ranges = max(1, n // RANGE_KEYS)
    width = max(1, -(-(hi - lo + 1) // ranges))
    return _KeyRanges(key, div, raw, temp, keyfiles, lo, width, ranges, int(bounds[0][2]))


def _find_differing_ranges(s: Session, delta: _Delta, ranges: _KeyRanges) -> int:
    """The ranges whose source and warehouse summaries differ, into `<temp>__ranges`;
    returns how many there are."""
    ranges_table = f"{delta.temp}__ranges"
    s.create_temp(
        ranges_table,
        f"select coalesce(src.b, wh.b) as b "
        f"from ({ranges.summary(f'select {ranges.key} from {ranges.keyfiles}')}) src "
        f"full join ({ranges.summary(ranges.warehouse_keys)}) wh on src.b = wh.b "
        "where src.b is null or wh.b is null or src.n <> wh.n or src.s1 <> wh.s1 "
        "or src.s2 <> wh.s2",
        ranges.geometry * 2,
    )
    differ = s.fetchone(f"select count(*) from {_temp(ranges_table)}")
    return int(differ[0]) if differ else 0


def _find_gone_in_ranges(s: Session, delta: _Delta, ranges: _KeyRanges, compared: int) -> None:
    """Compare the differing ranges key by key: their source keys into `<temp>__keys`,
    the warehouse keys the source lacks into `<temp>__gone` (`delta.gone`)."""
    key, keys_temp = ranges.key, f"{delta.temp}__keys"
    # no range differs: nothing to read (the engine skips a `false` filter's scan)
    in_ranges = (
        f"{ranges.bucket} in (select b from {_temp(f'{delta.temp}__ranges')})"
        if compared
        else "false"
    )
    in_params = ranges.geometry if compared else []
    s.create_temp(
        keys_temp,
        f"select distinct x.{key} from {ranges.keyfiles} x where {in_ranges}",
        in_params,
    )
    gone = f"{delta.temp}__gone"
    s.create_temp(
        gone,
        f"select x.{key} from ({ranges.warehouse_keys}) x where {in_ranges} and not exists "
        f"(select 1 from {_temp(keys_temp)} k where k.{key} = x.{key})",
        in_params,
    )
    delta.gone = gone


def _record_range_check(s: Session, delta: _Delta, ranges: _KeyRanges, compared: int) -> None:
    """What the range comparison read, into `delta.key_check` and the log."""
    read = s.fetchone(f"select count(*) from {_temp(delta.temp + '__keys')}")
    delta.key_check = {
        "ranges": ranges.ranges,
        "range_width": ranges.width,
        "ranges_compared": compared,
        "keys_compared": int(read[0]) if read else 0,
        "source_keys": ranges.source_keys,
    }
    log.info(
        "%s/%s: key set in %d ranges of %d keys, %d differ (%d source keys compared of %d)",
        delta.source,
        delta.table,
        ranges.ranges,
        ranges.width,
        delta.key_check["ranges_compared"],
        delta.key_check["keys_compared"],
        delta.key_check["source_keys"],
        extra={"key_check": {"table": delta.table, **delta.key_check}},
    )


@dataclass(frozen=True)
class _BucketCheck:
    """How `_find_gone_by_summaries` compares one delta with the source's landed bucket
    summaries: the quoted `key` of raw and the staged delta (`temp`), the engine `kind`,
    the bucket `width` and the landed summaries' `manifest`."""

    key: str
    raw: str
    temp: str
    kind: str
    width: int
    manifest: dict[str, Any]

    @property
    def warehouse_keys(self) -> str:
        return _warehouse_keys(self.key, self.raw, self.temp)

    def bucket(self) -> tuple[str, list[Any]]:
        """SQL of the bucket of key `x.<key>`, and its parameters."""
        return key_summary.qmark(
            key_summary.bucket_sql(f"x.{self.key}", self.kind), key_summary.params(self.width)
        )

    def warehouse_summary(self) -> tuple[str, list[Any]]:
        """SQL of the warehouse keys' summary per bucket (as the source's), and its parameters."""
        return key_summary.qmark(
            key_summary.summary_sql(f"x.{self.key}", f"({self.warehouse_keys}) x", self.kind),
            key_summary.params(self.width),
        )


def _find_gone_by_summaries(s: Session, delta: _Delta) -> None:
    """The keys gone from the source into `<temp>__gone`, from a run that landed the
    source's bucket summaries and the keys of its changed buckets only.

    The warehouse's keys after the merge (raw's and the delta's new ones) are summarised
    with the same SQL and bucket width as the source (`core.key_summary`); every bucket
    where the two differ is compared key by key against the keys landed for it, found
    by `_covering_runs` in this run or the earlier ones its summaries were compared with.
    A differing bucket no landed run covers fails the load (`LoadError`, naming the table
    and the key ranges) and asks the next extract for every key: deleting there could
    remove rows the source still has, skipping it would keep rows the source deleted.
    """
    assert delta.key_ranges is not None and delta.landing_root is not None
    if len(delta.keys) != 1:
        raise LoadError(
            f"{delta.source}/{delta.table}: run {delta.run_id} landed key-range summaries "
            f"for a key of {len(delta.keys)} columns ({', '.join(delta.keys)}): re-extract it"
        )
    delta.gone = f"{delta.temp}__gone"
    if not s.exists("raw", delta.table):  # the first load: nothing to delete
        key = _quoted(delta.keys[0])
        for name in (delta.gone, f"{delta.temp}__keys"):
            s.create_temp(name, f"select {key} from {_temp(delta.temp)} where false")
        return
    check = _plan_bucket_check(s, delta)
    differ = _find_differing_buckets(s, delta, check)
    covering, uncovered = _covering_runs(delta, differ, check.width)
    if uncovered:
        _uncovered(delta, uncovered, check.width)
    _create_buckets(s, f"{delta.temp}__ranges", differ)
    _stage_covered_keys(s, delta, check, covering)
    _find_gone_in_buckets(s, delta, check)
    _record_bucket_check(s, delta, check, differ, covering)


def _plan_bucket_check(s: Session, delta: _Delta) -> _BucketCheck:
    """The comparison with the landed summaries; `LoadError` when this engine cannot
    compute them or they record no bucket width."""
    assert delta.key_ranges is not None
    if not key_summary.supported(s.kind):
        raise LoadError(
            f"{delta.source}/{delta.table}: the warehouse engine {s.kind!r} cannot compute "
            "the key-range summaries the run landed: re-extract it with a full key set"
        )
    manifest = key_check.read_manifest(delta.key_ranges) or {}
    width = manifest.get("width")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise LoadError(
            f"{delta.source}/{delta.table}: {delta.key_ranges} records no bucket width: "
            "re-extract the run"
        )
    key, raw, temp = _quoted(delta.keys[0]), _raw(s, delta.table), _temp(delta.temp)
    return _BucketCheck(key, raw, temp, s.kind, width, manifest)


def _find_differing_buckets(s: Session, delta: _Delta, check: _BucketCheck) -> set[int]:
    """The buckets whose landed source summary differs from the warehouse's."""
    assert delta.key_ranges is not None
    source_ranges = f"{delta.temp}__source_ranges"
    s.stage_parquet(source_ranges, [delta.key_ranges], union_by_name=False)
    summary, summary_params = check.warehouse_summary()
    return {
        int(r[0])
        for r in s.fetchall(
            "select coalesce(src.b, wh.b) "
            f"from (select * from {_temp(source_ranges)} where n > 0) src "
            f"full join ({summary}) wh on src.b = wh.b "
            "where src.b is null or wh.b is null or src.n <> wh.n or src.s1 <> wh.s1 "
            "or src.s2 <> wh.s2",
            summary_params,
        )
    }


def _create_buckets(s: Session, name: str, buckets: set[int]) -> None:
    """Temp table `name(b bigint)` holding `buckets`, in order."""
    s.create_temp(name, "", columns="b bigint")
    s.insert_arrow(_temp(name), pa.table({"b": pa.array(sorted(buckets), pa.int64())}))


def _stage_covered_keys(
    s: Session, delta: _Delta, check: _BucketCheck, covering: list[tuple[Path, set[int]]]
) -> None:
    """The source keys of the differing buckets into `<temp>__keys`, each bucket's from
    the landed key set that covers it."""
    key = check.key
    bucket, bucket_params = check.bucket()
    selects, params = [], []
    for i, (directory, buckets) in enumerate(covering):
        files, cover = f"{delta.temp}__keyfiles{i}", f"{delta.temp}__cover{i}"
        s.stage_parquet(files, [directory], union_by_name=False)
        _create_buckets(s, cover, buckets)
        selects.append(
            f"select x.{key} from {_temp(files)} x where {bucket} in (select b from {_temp(cover)})"
        )
        params += bucket_params
    if not selects:
        selects, params = [f"select {key} from {check.temp} where false"], []
    s.create_temp(
        f"{delta.temp}__keys",
        f"select distinct u.{key} from ({' union all '.join(selects)}) u",
        params,
    )


def _find_gone_in_buckets(s: Session, delta: _Delta, check: _BucketCheck) -> None:
    """The warehouse keys of the differing buckets the source lacks, into `<temp>__gone`."""
    key = check.key
    bucket, bucket_params = check.bucket()
    s.create_temp(
        f"{delta.temp}__gone",
        f"select x.{key} from ({check.warehouse_keys}) x "
        f"where {bucket} in (select b from {_temp(f'{delta.temp}__ranges')}) and not exists "
        f"(select 1 from {_temp(f'{delta.temp}__keys')} k where k.{key} = x.{key}) "
        # a key the run read is at the source in this snapshot, whatever the summaries say
        f"and not exists (select 1 from {check.temp} d where d.{key} = x.{key})",
        bucket_params,
    )


def _record_bucket_check(
    s: Session,
    delta: _Delta,
    check: _BucketCheck,
    differ: set[int],
    covering: list[tuple[Path, set[int]]],
) -> None:
    """What the bucket comparison read, into `delta.key_check` and the log."""
    read = s.fetchone(f"select count(*) from {_temp(f'{delta.temp}__keys')}")
    delta.key_check = {
        "ranges": int(check.manifest.get("buckets") or 0),
        "range_width": check.width,
        "ranges_compared": len(differ),
        "keys_compared": int(read[0]) if read else 0,
        "source_keys_landed": sum(_landed_rows(d) for d, _ in covering),
        "runs_read": len(covering),
    }
    log.info(
        "%s/%s: %d buckets of %d keys, %d differ from the warehouse (%d source keys compared, "
        "from %d landed run(s))",
        delta.source,
        delta.table,
        delta.key_check["ranges"],
        check.width,
        len(differ),
        delta.key_check["keys_compared"],
        len(covering),
        extra={"key_check": {"table": delta.table, **delta.key_check}},
    )


def _landed_rows(directory: Path) -> int:
    return int((key_check.read_manifest(directory) or {}).get("rows") or 0)


def _covering_runs(
    delta: _Delta, differ: set[int], width: int
) -> tuple[list[tuple[Path, set[int]]], set[int]]:
    """For the differing buckets, the landed key sets that hold their source keys:
    ([(keys directory, buckets it covers)], buckets none covers).

    The run's own key set covers the buckets whose keys it landed. A bucket it did not
    land had the same summary in the run it was compared with (`previous_run_id`), so
    the same keys: that run's key set covers it if it landed them, else the one before,
    and so on. A link counts only if the earlier run is still landed as it was compared
    (its summaries' checksum) and its key set is the one landed with those summaries
    (`key_check_id`).
    """
    assert delta.landing_root is not None and delta.key_ranges is not None
    remaining, covering = set(differ), []
    ranges_dir, visited = delta.key_ranges, set()
    manifest = key_check.read_manifest(ranges_dir)
    while remaining and manifest is not None:
        run_id = manifest.get("run_id")
        if run_id in visited or manifest.get("width") != width:
            break
        visited.add(run_id)
        keys_dir = run_dir(delta.landing_root, delta.source, f"{delta.table}__keys", run_id)
        keys_manifest = key_check.read_manifest(keys_dir)
        if (
            keys_manifest is None
            or not manifest.get("key_check_id")
            or keys_manifest.get("key_check_id") != manifest.get("key_check_id")
            or not any(keys_dir.glob("*.parquet"))
        ):
            break
        if manifest.get("keys") == "all":
            covering.append((keys_dir, remaining))
            return covering, set()
        summaries = key_check.read_summaries(ranges_dir)
        keyed = {
            b
            for b, k in zip(
                summaries.column("b").to_pylist(), summaries.column("keys").to_pylist(), strict=True
            )
            if k
        }
        if found := remaining & keyed:
            covering.append((keys_dir, found))
            remaining -= found
        previous, checksum = manifest.get("previous_run_id"), manifest.get("previous_checksum")
        if not remaining or not previous or not run_ids.is_valid(previous):
            break
        ranges_dir = run_dir(
            delta.landing_root, delta.source, f"{delta.table}{key_check.RANGES_SUFFIX}", previous
        )
        manifest = key_check.read_manifest(ranges_dir)
        if manifest is not None and manifest.get("checksum_sha256") != checksum:
            manifest = None  # landed again since: not the summaries compared with
    return covering, remaining


def _uncovered(delta: _Delta, buckets: set[int], width: int) -> None:
    """Fail the load for differing buckets no landed run covers; ask for a full key set."""
    assert delta.landing_root is not None
    spans = key_summary.intervals(buckets, width)
    shown = ", ".join(f"[{lo}, {hi}]" for lo, hi in spans[:10])
    more = f" and {len(spans) - 10} more" if len(spans) > 10 else ""
    reason = (
        f"load of run {delta.run_id}: {len(buckets)} key range(s) of {delta.table} differ "
        "from the warehouse and no landed run holds their keys"
    )
    path = key_check.request_full_key_set(
        delta.landing_root, delta.table, delta.run_id, buckets, reason
    )
    raise LoadError(
        f"{delta.source}/{delta.table} run={delta.run_id}: the keys of {delta.table}.{delta.keys[0]} "
        f"in {shown}{more} differ between the source and the warehouse, and no landed run "
        "holds the source's keys there (an earlier landed run was lost or pruned): the "
        "deletes cannot be checked. The next extract of the table lands its full key set "
        f"(requested in {path}); rerun the night (extract, then load)."
    )


_INTS = (pa.int8(), pa.int16(), pa.int32(), pa.int64())
_FLOATS = (pa.float32(), pa.float64())


def _widens(old: pa.DataType, new: pa.DataType) -> bool:
    """Type `new` holds every value of `old` exactly (see extract.landing's
    `lossless_widening`, of which this is the warehouse side)."""
    if pa.types.is_decimal(old) and pa.types.is_decimal(new):
        p, s_ = old.precision, old.scale
        p2, s2 = new.precision, new.scale
        return (p2, s2) != (p, s_) and s2 >= s_ and p2 - s2 >= p - s_
    for family in (_INTS, _FLOATS):
        if old in family and new in family:
            return family.index(new) > family.index(old)
    return old in _INTS[:3] and new == pa.float64()


def _record_accepted_drift(s: Session, delta: _Delta, run_id: str) -> None:
    """Schema drift the operator accepted at landing (ACCEPT_SCHEMA_DRIFT) goes into
    `ops.guard_overrides` with the run that loads it (guard `schema_drift`)."""
    parts = [p for p in delta.parts if p.manifest.get("accepted_drift")]
    if not parts:
        return
    ops.create(s, "guard_overrides")
    s.execute(  # a reload of the run records it once
        "delete from {ops}.guard_overrides where run_id = ? and guard = 'schema_drift' "
        "and table_name = ?",
        [run_id, delta.table],
    )
    for part in parts:
        accepted = part.manifest["accepted_drift"]
        details = {**accepted, "previous_run_id": part.manifest.get("previous_run_id")}
        if part.shard:
            details["shard"] = part.shard
        log.warning(
            "%s/%s run=%s: schema drift accepted by the operator: %s",
            delta.source,
            delta.table,
            run_id,
            json.dumps(accepted),
        )
        s.execute(
            "insert into {ops}.guard_overrides values (?, 'schema_drift', ?, ?, now())",
            [run_id, delta.table, json.dumps(details, sort_keys=True)],
        )


def _key_match(keys: tuple[str, ...], left: str, right: str) -> str:
    return " and ".join(f"{left}.{_quoted(k)} = {right}.{_quoted(k)}" for k in keys)


def _changed_rows(s: Session, delta: _Delta, compare: list[str]) -> str:
    """SQL selecting the delta rows (alias d, plus old row o) that are new or changed."""
    target = _raw(s, delta.table)
    temp = _temp(delta.temp)
    if not s.exists("raw", delta.table):
        return f"select d.*, cast(null as boolean) as _is_old from {temp} d"
    same = _same_row(s, compare, _columns(s, target), _columns(s, temp))
    newer = (
        f"coalesce(o.{_quoted(delta.cursor)} > d.{_quoted(delta.cursor)}, false)"
        if delta.cursor
        else "false"
    )
    return (
        f"select d.*, (o.{_quoted(delta.keys[0])} is not null) as _is_old from {temp} d "
        f"left join {target} o on {_key_match(delta.keys, 'o', 'd')} "
        f"where o.{_quoted(delta.keys[0])} is null or not ({newer} or ({same or 'true'}))"
    )


def _same_row(
    s: Session,
    compare: list[str],
    raw_cols: dict[str, pa.DataType],
    delta_cols: dict[str, pa.DataType],
) -> str:
    """`o` (raw) and `d` (delta) hold the same values in the `compare` columns raw has
    (`_same_value` each); '' when there is none."""
    return " and ".join(
        _same_value(s, c, raw_cols[c], delta_cols.get(c, raw_cols[c]))
        for c in compare
        if c in raw_cols
    )


def _same_value(s: Session, column: str, old: pa.DataType, new: pa.DataType) -> str:
    """`o.<column>` (raw) and `d.<column>` (delta) hold the same value. When the landed
    type differs from raw's (a widening, or drift the operator accepted), the narrower
    side is cast to the wider type; two unrelated types are compared as text (an engine
    without implicit casts, PostgreSQL, refuses `text = bigint`)."""
    o, d = f"o.{_quoted(column)}", f"d.{_quoted(column)}"
    if old != new and not (pa.types.is_null(old) or pa.types.is_null(new)):
        if _widens(old, new):
            o = f"cast({o} as {s.column_type(new)})"
        elif _widens(new, old):
            d = f"cast({d} as {s.column_type(old)})"
        else:
            o, d = f"cast({o} as varchar)", f"cast({d} as varchar)"
    return f"{o} is not distinct from {d}"


def _affected_orders(s: Session, deltas: dict[str, _Delta]) -> None:
    """temp table `affected(order_id, reason)`: orders whose business day must be restated."""
    s.create_temp("affected", "", columns="order_id bigint, reason varchar")
    has_raw = {t: s.exists("raw", t) for t in ("orders", "order_items")}

    def all_rows(table: str, columns: str) -> str:
        parts = []
        if has_raw.get(table):
            parts.append(f"select {columns} from {_raw(s, table)}")
        if table in deltas and not deltas[table].skipped:
            parts.append(f"select {columns} from {_temp(deltas[table].temp)}")
        return " union all ".join(parts) or (
            f"select {columns} from (select cast(null as bigint) as x) _none where false"
        )

    orders = deltas.get("orders")
    if orders and not orders.skipped:
        changed = _changed_rows(s, orders, _compare_columns(s, orders))
        s.execute(
            "insert into affected select id, case when _is_old then 'order_changed' "
            f"else 'order_new' end from ({changed}) c"
        )
    items = deltas.get("order_items")
    if items and not items.skipped:
        changed = _changed_rows(s, items, _compare_columns(s, items))
        s.execute(f"insert into affected select order_id, 'items_changed' from ({changed}) c")
        if has_raw["order_items"]:
            raw_items = _raw(s, "order_items")
            # the old order of a changed item (an item moved to another order)
            s.execute(
                "insert into affected select o.order_id, 'items_changed' "
                f"from {raw_items} o join ({changed}) d on o.id = d.id"
            )
            if items.key_sets is not None:
                gone = _gone_sql(items, raw_items, _temp(items.temp + "__keys"))
                s.execute(f"insert into affected select g.order_id, 'item_deleted' from ({gone}) g")
    users = deltas.get("users")
    if users and not users.skipped:
        changed = _changed_rows(s, users, ["region"])
        s.execute(
            "insert into affected select o.id, 'user_region' "
            f"from ({all_rows('orders', 'id, user_id')}) o "
            f"where o.user_id in (select id from ({changed}) c)"
        )
    products = deltas.get("products")
    if products and not products.skipped:
        changed = _changed_rows(s, products, ["category"])
        s.execute(
            "insert into affected select i.order_id, 'product_category' "
            f"from ({all_rows('order_items', 'order_id, product_id')}) i "
            f"where i.product_id in (select id from ({changed}) c)"
        )


def _compare_columns(s: Session, delta: _Delta) -> list[str]:
    return [c for c in _columns(s, _temp(delta.temp)) if c not in _META_COLUMNS]


def _record_restated(s: Session, run_id: str, report_tz: str, orders: _Delta | None) -> None:
    """Business days (old and new) of the affected orders → ops.restated_days (no dupes).
    When raw.orders already holds orders, each (order, day) pair → ops.restated_orders too:
    fct_orders rebuilds those orders, not their whole days (a first load records days only:
    every order is new, and fct_orders is built in full)."""
    sources = []
    incremental = s.exists("raw", "orders")
    if incremental:
        sources.append(f"select id, created_at from {_raw(s, 'orders')}")
    if orders is not None and not orders.skipped:
        sources.append(f"select id, created_at from {_temp(orders.temp)}")
    if not sources:
        return
    pairs = f"""
        select a.order_id, a.reason,
            cast(timezone(cast(? as varchar), o.created_at) as date) as business_date
        from affected a join ({" union all ".join(sources)}) o on o.id = a.order_id
        where o.created_at is not null
    """
    s.execute(
        f"""
        insert into {{ops}}.restated_days (run_id, business_date, reason)
        select distinct cast(? as varchar), days.business_date, days.reason from ({pairs}) days
        where not exists (
            select 1 from {{ops}}.restated_days r
            where r.run_id = ? and r.business_date = days.business_date
              and r.reason = days.reason
        )
        """,
        [run_id, report_tz, run_id],
    )
    if incremental:
        s.execute(
            f"""
            insert into {{ops}}.restated_orders (run_id, order_id, business_date)
            select distinct cast(? as varchar), p.order_id, p.business_date from ({pairs}) p
            where not exists (
                select 1 from {{ops}}.restated_orders r
                where r.run_id = ? and r.order_id = p.order_id
                  and r.business_date = p.business_date
            )
            """,
            [run_id, report_tz, run_id],
        )


def _record_revised_rates(s: Session, run_id: str, fx: _Delta) -> None:
    """Days whose stored FX rate the provider revised → ops.restated_days ('fx rate
    revised'): the marts and daily_sales recompute them, the report says why."""
    if not s.exists("raw", "fx_rates"):
        return
    s.execute(
        f"""
        insert into {{ops}}.restated_days (run_id, business_date, reason)
        select distinct cast(? as varchar), d.rate_date, cast('fx rate revised' as varchar)
        from {_temp(fx.temp)} d join {_raw(s, "fx_rates")} o
            on o.rate_date = d.rate_date and o.currency = d.currency
        where o.rate is distinct from d.rate
          and not exists (
            select 1 from {{ops}}.restated_days r
            where r.run_id = ? and r.business_date = d.rate_date
              and r.reason = 'fx rate revised'
          )
        """,
        [run_id, run_id],
    )


def _keys_relation(delta: _Delta) -> str | None:
    """The relation holding the table's whole key set at the source, if the run landed one
    (a full extract is itself the whole key set)."""
    if delta.key_sets is not None:
        return _temp(f"{delta.temp}__keys")
    if delta.full_key_set:
        return _temp(delta.temp)
    return None


def _gone_sql(delta: _Delta, target: str, keys_relation: str) -> str:
    """Rows of `target` whose key the source no longer has."""
    if delta.gone is not None:
        match = _key_match(delta.keys, "o", "g")
        return f"select o.* from {target} o where exists (select 1 from {_temp(delta.gone)} g where {match})"
    match = _key_match(delta.keys, "o", "k")
    return f"select o.* from {target} o where not exists (select 1 from {keys_relation} k where {match})"


def _key_text(delta: _Delta) -> str:
    return " || '|' || ".join(f"cast(g.{_quoted(k)} as varchar)" for k in delta.keys)


def _guard_deletes(s: Session, plan: list[_Delta], run_id: str, guard: Any, allow: bool) -> None:
    """Stop before any merge when the key sets would delete too much (warehouse/guards.py).

    Whatever made the run read in full (another source identity, a restore, FULL=1), the
    guard applies: a database recreated from an old dump is "another source" too. The
    error then says why the run was full; `allow` (ALLOW_MASS_DELETE=1) is the only way on.
    """
    from warehouse.guards import MassDeleteError, enforce, plan_delete

    planned = []
    reasons: set[str] = set()
    for delta in plan:
        keys_relation = _keys_relation(delta)
        if delta.skipped or keys_relation is None or not s.exists("raw", delta.table):
            continue
        reasons.update(
            str(p.manifest["source_change_reason"])
            for p in delta.parts
            if p.manifest.get("source_change_reason")
        )
        target = _raw(s, delta.table)
        gone = _gone_sql(delta, target, keys_relation)
        limit = guard.limit(delta.table)
        planned.append(plan_delete(s, delta.table, target, gone, _key_text(delta), limit))
    try:
        enforce(s, planned, run_id=run_id, allow=allow)
    except MassDeleteError as exc:
        if not reasons:
            raise
        raise MassDeleteError(
            f"{exc}\nThis run read the source in full because {'; '.join(sorted(reasons))}. "
            "If the pipeline was pointed at another database on purpose, or the restore is "
            "meant to stand, rerun the day with ALLOW_MASS_DELETE=1."
        ) from None


def _kept_loaded_at(s: Session, delta: _Delta, staged: dict[str, pa.DataType]) -> str:
    """A temp table of the delta's keys whose row raw already holds as it is, with that
    row's `_loaded_at`: a re-read of an unchanged row (the window's overlap, a full read)
    is not newly loaded data, so it keeps its stamp and source freshness still sees a
    source that stopped changing."""
    target = _raw(s, delta.table)
    same = _same_row(s, list(staged), _columns(s, target), staged)
    name = f"{delta.temp}__kept"
    keys = ", ".join(f"d.{_quoted(k)}" for k in delta.keys)
    s.create_temp(
        name,
        f"select {keys}, o._loaded_at from {_temp(delta.temp)} d "
        f"join {target} o on {_key_match(delta.keys, 'o', 'd')} where {same or 'true'}",
    )
    return _temp(name)


def _merge(s: Session, delta: _Delta, run_id: str, loaded_at: datetime) -> int:
    """Upsert the staged delta into raw.<table> (`_run_id`, `_loaded_at` set); apply its
    key set. Returns rows deleted."""
    target = _raw(s, delta.table)
    temp = _temp(delta.temp)
    staged = _columns(s, temp)
    names = ", ".join(_quoted(c) for c in staged)
    if not s.exists("raw", delta.table):
        s.execute(
            f"create table {target} as select *, cast(null as varchar) as _run_id, "
            f"cast(null as timestamptz) as _loaded_at from {temp} where false"
        )
        s.execute(
            f"insert into {target} ({names}, _run_id, _loaded_at) "
            f"select {names}, cast(? as varchar), cast(? as timestamptz) from {temp}",
            [run_id, loaded_at],
        )
    else:
        existing = _columns(s, target)
        for name, type_ in staged.items():
            if name not in existing:
                s.add_column(target, name, type_)
            elif existing[name] != type_ and _widens(existing[name], type_):
                # a lossless widening at the source (numeric(12,2) -> (14,2)), accepted
                # by the landing's drift check: raw's column follows, or the wider values
                # would not fit it
                log.warning(
                    "raw.%s.%s widened from %s to %s", delta.table, name, existing[name], type_
                )
                s.widen_column(target, name, type_)
        # A full extract is the whole table as the source holds it now: it replaces every
        # row, even one whose stored cursor is later (e.g. the warehouse was loaded from
        # another database before). An incremental delta only replaces older versions.
        newer = (
            f"coalesce({target}.{_quoted(delta.cursor)} > d.{_quoted(delta.cursor)}, false)"
            if delta.cursor and not delta.full_key_set
            else "false"
        )
        kept = _kept_loaded_at(s, delta, staged)
        # a join (`using`), not a correlated `exists`: DuckDB then probes the delta's
        # keys instead of evaluating the subquery over every row of raw
        s.execute(
            f"delete from {target} using {temp} d "
            f"where {_key_match(delta.keys, target, 'd')} and not {newer}"
        )
        s.execute(
            f"insert into {target} ({names}, _run_id, _loaded_at) "
            f"select {', '.join('d.' + _quoted(c) for c in staged)}, cast(? as varchar), "
            f"coalesce(k._loaded_at, cast(? as timestamptz)) from {temp} d "
            f"left join {kept} k on {_key_match(delta.keys, 'k', 'd')} "
            f"where not exists (select 1 from {target} o where {_key_match(delta.keys, 'o', 'd')})",
            [run_id, loaded_at],
        )
    keys_relation = _keys_relation(delta)
    if keys_relation is None:
        return 0
    gone = _gone_sql(delta, target, keys_relation)
    key_text = _key_text(delta)
    s.execute(
        "insert into {ops}.deleted_rows (run_id, table_name, key, deleted_at) "
        f"select cast(? as varchar), cast(? as varchar), {key_text}, cast(? as timestamptz) "
        f"from ({gone}) g",
        [run_id, delta.table, loaded_at],
    )
    if delta.gone is not None:
        return s.execute(
            f"delete from {target} using {_temp(delta.gone)} g "
            f"where {_key_match(delta.keys, target, 'g')}"
        )
    return s.execute(
        f"delete from {target} where not exists (select 1 from {keys_relation} k "
        f"where {_key_match(delta.keys, target, 'k')})"
    )


@dataclass(frozen=True)
class _Target:
    """Where a load writes: `warehouse` (on its `build`, or the published warehouse when
    None), else the DuckDB file `path`."""

    path: Path | None
    warehouse: Warehouse | None = None
    build: Build | None = None

    def open(self) -> Warehouse:
        if self.warehouse is not None:
            return self.warehouse
        if self.path is None:
            raise LoadError("no warehouse: give a DuckDB file path or a Warehouse")
        from warehouse.backends.duckdb import DuckDBWarehouse

        return DuckDBWarehouse(Path(self.path))


@dataclass(frozen=True)
class _LoadPlan:
    """One load of run `run_id`: its `deltas` into `target`, in one transaction.

    `report_tz` (None: not recorded) is the zone of the business days the changes
    restate; `guard` (warehouse/guards.py; None: off) stops key-set deletes that would
    remove too much of a table, unless `allow_mass_delete`."""

    deltas: tuple[_Delta, ...]
    run_id: str
    target: _Target
    report_tz: str | None = None
    guard: Any = None
    allow_mass_delete: bool = False
    # `_loaded_at` of every row the load writes: the run's clock (core/clock.py), which
    # source freshness compares it with, not the warehouse server's
    loaded_at: datetime = field(default_factory=clock.now)
    ops_history_days: int = 0

    @property
    def by_table(self) -> dict[str, _Delta]:
        return {d.table: d for d in self.deltas}


@dataclass
class _Loaded:
    """What a load did, per table: landed `rows`, rows `deleted` by this run id, the
    `raw_rows` after it; the ISO business days it `restated` (None: not recorded)."""

    rows: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    raw_rows: dict[str, int] = field(default_factory=dict)
    restated: list[str] | None = None

    def result(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "rows": self.rows,
            "deleted": self.deleted,
            "raw_rows": self.raw_rows,
        }
        if self.restated is not None:
            result["restated_days"] = self.restated
        return result


def _load(plan: _LoadPlan) -> dict[str, Any]:
    """Stage, check and merge the plan's deltas in one warehouse transaction; the result
    of `load_source_db`."""
    warehouse = plan.target.open()
    loaded = _Loaded()
    with warehouse.transaction(plan.target.build) as s:
        _create_schemas(s)
        _stage_deltas(s, plan, loaded)
        _check_and_record_changes(s, plan)
        _merge_deltas(s, plan)
        _count_loaded(s, plan, loaded)
        _check_nothing_missed(plan, loaded)
        _prune_ops_history(s, plan.run_id, plan.ops_history_days)
    _log_merged(plan, loaded)
    return loaded.result()


OPS_HISTORY = ("restated_days", "restated_orders", "deleted_rows")


def _prune_ops_history(s: Session, run_id: str, days: int) -> None:
    """Delete the rows of `OPS_HISTORY` whose run is named by a day more than `days`
    days before this run's day (0: keep all). dbt and daily_sales read only the loading
    run's rows; the report's "restated by" list reads a day's later runs. A run named by
    no day, and this run, are kept."""
    run_day = run_ids.day_of(run_id)
    if days <= 0 or run_day is None:
        return
    cutoff = run_day - timedelta(days=days)
    for name in OPS_HISTORY:
        table = s.table("ops", name)
        runs = [r for (r,) in s.fetchall(f"select distinct run_id from {table}")]
        old = [r for r in runs if run_ids.expired(r, cutoff, run_day, set())]
        for start in range(0, len(old), 500):
            batch = old[start : start + 500]
            marks = ", ".join("?" for _ in batch)
            s.execute(f"delete from {table} where run_id in ({marks})", batch)
        if old:
            log.info("ops.%s: rows of %d run(s) before %s pruned", name, len(old), cutoff)


def _create_schemas(s: Session) -> None:
    """`raw`, and the `ops` tables the load writes."""
    s.execute("create schema if not exists {raw}")
    ops.create(s, "deleted_rows", "restated_days", "restated_orders")
    ensure_schema(s)


def _stage_deltas(s: Session, plan: _LoadPlan, loaded: _Loaded) -> None:
    """Stage every delta not loaded before (refusing a stale one); count landed rows."""
    for delta in plan.deltas:
        delta.skipped = _already_loaded(s, delta, plan.run_id)
        if not delta.skipped:
            _check_not_stale(s, delta, plan.run_id)
            loaded.rows[delta.table] = _stage(s, delta)
        else:
            loaded.rows[delta.table] = sum(int(p.manifest.get("rows", 0)) for p in delta.parts)
            log.info("%s/%s run=%s is already loaded", delta.source, delta.table, plan.run_id)


def _check_and_record_changes(s: Session, plan: _LoadPlan) -> None:
    """Before any merge: the mass-delete guard, then the business days the staged changes
    restate and the FX rates the provider revised."""
    if plan.guard is not None:
        _guard_deletes(s, list(plan.deltas), plan.run_id, plan.guard, plan.allow_mass_delete)
    deltas = plan.by_table
    if plan.report_tz is not None:
        _affected_orders(s, deltas)
        _record_restated(s, plan.run_id, plan.report_tz, deltas.get("orders"))
    fx = deltas.get("fx_rates")
    if fx is not None and not fx.skipped:
        _record_revised_rates(s, plan.run_id, fx)


def _merge_deltas(s: Session, plan: _LoadPlan) -> None:
    """Merge each staged delta, record its accepted drift and a watermark per shard."""
    for delta in plan.deltas:
        if delta.skipped:
            continue
        _merge(s, delta, plan.run_id, plan.loaded_at)
        _record_accepted_drift(s, delta, plan.run_id)
        for part in delta.parts:  # a watermark per shard ('' when unsharded)
            record_loaded(
                s,
                source=delta.source,
                table=delta.table,
                run_id=plan.run_id,
                manifest=part.manifest,
                shard=part.shard,
            )


def _count_loaded(s: Session, plan: _LoadPlan, loaded: _Loaded) -> None:
    """Rows of raw per table, rows this run id deleted, and the days it restated."""
    for delta in plan.deltas:
        row = s.fetchone(f"select count(*) from {_raw(s, delta.table)}")
        loaded.raw_rows[delta.table] = int(row[0]) if row else 0
        # all rows this run id deleted (the same answer when the run is reloaded)
        row = s.fetchone(
            "select count(*) from {ops}.deleted_rows where run_id = ? and table_name = ?",
            [plan.run_id, delta.table],
        )
        loaded.deleted[delta.table] = int(row[0]) if row else 0
    if plan.report_tz is not None:
        loaded.restated = [
            r[0].isoformat()
            for r in s.fetchall(
                "select distinct business_date from {ops}.restated_days where run_id = ? "
                "order by 1",
                [plan.run_id],
            )
        ]


def _check_nothing_missed(plan: _LoadPlan, loaded: _Loaded) -> None:
    """Raw holds at least the rows the source held up to the run's upper bound (the
    manifests' `source_rows` of incremental tables, summed over a sharded source's
    shards): fewer means rows no window ever read, committed later than the overlap
    behind the watermark they carry. LoadError: nothing of the run is published."""
    short = []
    for delta in plan.deltas:
        counts = [p.manifest.get("source_rows") for p in delta.parts]
        if delta.skipped or not all(isinstance(c, int) for c in counts):
            continue
        held = sum(counts)
        raw = loaded.raw_rows.get(delta.table, 0)
        if raw < held:
            seconds = delta.manifest.get("overlap_seconds")
            overlap = f"{seconds:g} s" if isinstance(seconds, int | float) else "?"
            short.append(
                f"raw.{delta.table} holds {raw} rows after the merge, the source held {held} "
                f"in the run's snapshot: {held - raw} row(s) were never read, most likely "
                f"committed more than the overlap ({overlap}) after the {delta.cursor} "
                "they carry"
            )
    if short:
        raise LoadError(
            f"{plan.run_id}: " + "; ".join(short) + ". Nothing was published. Rerun the day "
            "with FULL=1 (every row is read again); if the source keeps committing that "
            "late, raise the table's overlap_minutes (EXTRACT_CONFIG)."
        )


def _log_merged(plan: _LoadPlan, loaded: _Loaded) -> None:
    for delta in plan.deltas:
        log.info(
            "merged %s/%s run=%s: %d landed rows, %d deleted, raw now %d rows",
            delta.source,
            delta.table,
            plan.run_id,
            loaded.rows[delta.table],
            loaded.deleted[delta.table],
            loaded.raw_rows[delta.table],
        )


@dataclass(frozen=True)
class SourceLoadPlan:
    """How `load_source_db` / `load_source_db_sharded` load run `run_id` of `tables`.

    `report_tz` is the zone of the business days the changes restate. The load runs on
    `warehouse` (and its `build`; None: the published warehouse), else on the DuckDB file
    `warehouse_path`. `guard` (warehouse/guards.py; None: off) stops a load whose key
    sets would delete too much of a table, unless `allow_mass_delete`. `ops_history_days`
    (0: keep all) prunes the load's bookkeeping of older runs (`_prune_ops_history`)."""

    run_id: str
    report_tz: str
    tables: tuple[str, ...] = KNOWN_TABLES["source_db"]
    _: KW_ONLY
    warehouse_path: Path | None = None
    warehouse: Warehouse | None = None
    build: Build | None = None
    guard: Any = _DEFAULT_GUARD
    allow_mass_delete: bool = False
    ops_history_days: int = 0


def _source_load(plan: SourceLoadPlan, deltas: list[_Delta]) -> _LoadPlan:
    """The load of `deltas` (the landed runs of `plan.run_id`) as `plan` says."""
    target = _Target(plan.warehouse_path, plan.warehouse, plan.build)
    return _LoadPlan(
        tuple(deltas),
        plan.run_id,
        target,
        plan.report_tz,
        plan.guard,
        plan.allow_mass_delete,
        ops_history_days=plan.ops_history_days,
    )


def load_source_db(landing_root: Path, plan: SourceLoadPlan) -> dict[str, Any]:
    """Merge the landed `source_db` run under `landing_root` into `raw.*` in one
    transaction, as `plan` says.

    Returns {"rows": landed rows per table, "deleted": rows removed by key sets,
    "raw_rows": current rows per table, "restated_days": ISO business days (REPORT_TZ)
    this run touched}. Loading the same run again changes nothing.
    """
    deltas = _plan(landing_root, "source_db", tuple(plan.tables), plan.run_id)
    return _load(_source_load(plan, deltas))


def load_source_db_sharded(landing_root: Path, plan: SourceLoadPlan) -> dict[str, Any]:
    """Merge every shard's delta of sharded run `plan.run_id` into `raw.*` in ONE
    transaction, as `plan` says.

    The shards come from the run record the extract wrote once every shard had landed
    (none: the run is incomplete, `LoadError`). Deltas are upserted by key, newest
    `updated_at` wins (a row copied to a new shard during a reshard is not doubled, and a
    stale copy never overwrites a newer version); a watermark is recorded per shard;
    key-set deletes use the union of all shards' key sets of this run. Same result
    shape as `load_source_db`, plus "shards" and "map_version".
    """
    record = _shard_run_record(landing_root, plan.run_id)
    deltas = _plan_sharded(landing_root, tuple(plan.tables), plan.run_id, record)
    result = _load(_source_load(plan, deltas))
    result["shards"] = [s["name"] for s in record["shards"]]
    result["map_version"] = record.get("shard_map", {}).get("version")
    return result


def _shard_run_record(landing_root: Path, run_id: str) -> dict[str, Any]:
    """The record of sharded run `run_id` (`LoadError` when the run is incomplete)."""
    from extract.db_extract import read_shard_run_record

    record = read_shard_run_record(landing_root, run_id)
    if record is None:
        raise LoadError(
            f"source_db run={run_id}: no complete sharded extract (no run record under "
            f"{Path(landing_root) / 'source_db' / '_shard_runs'}): a shard failed or the "
            "extract did not run"
        )
    return record


def load_payments_api(
    warehouse_path: Path | None,
    landing_root: Path,
    run_id: str,
    tables: tuple[str, ...] = KNOWN_TABLES["payments_api"],
    *,
    warehouse: Warehouse | None = None,
    build: Build | None = None,
) -> dict[str, Any]:
    """Merge the landed `payments_api` run (payments by id, fx_rates by day + currency)."""
    deltas = _plan(landing_root, "payments_api", tuple(tables), run_id)
    target = _Target(warehouse_path, warehouse, build)
    return _load(_LoadPlan(tuple(deltas), run_id, target))
