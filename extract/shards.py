"""Sharded sources: one logical source = N physical databases behind a virtual-shard map.

`virtual_shard = key % virtual_shards` (1024 by default) and the map assigns every
virtual shard (vshard) to exactly one physical shard (a database). An extract reads every
physical shard in parallel, each restricted to the vshards the map gives it, so a row
that lingers in its old database after a reshard is never read twice, and every vshard
is read from exactly one place. See docs/sharding.md for resharding and watermarks.

Map file (YAML or JSON):

    virtual_shards: 1024
    version: 3
    shards:
      - {name: s0, url: "postgresql://u:p@h0/app", vshards: [[0, 511]]}
      - {name: s1, conn_id: source_db_shard1, vshards: [[512, 1023]],
         replica_conn_id: source_db_shard1_replica, replica_on_lag: fail}

`url` is used as is; `conn_id` is resolved through `core.settings.get_connection_uri`
(`AIRFLOW_CONN_<ID>` or Airflow's own lookup) when the shard is read.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from core.settings import get_connection_uri, secrets_in_uri, sqlalchemy_url
from extract.replica import safe_url

log = logging.getLogger(__name__)

DEFAULT_VIRTUAL_SHARDS = 1024

Range = tuple[int, int]  # inclusive [lo, hi] of virtual shards
Ranges = tuple[Range, ...]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_PERCENT_MOD_DIALECTS = {"postgresql", "mysql", "mariadb", "sqlite", "mssql", "duckdb"}


class ShardMapError(ValueError):
    """The shard map is invalid; the message names the shards / vshards at fault."""


class ShardExtractError(RuntimeError):
    """One or more shards failed; `failures` maps shard name → exception."""

    def __init__(
        self, failures: Mapping[str, BaseException], results: Sequence[ShardResult]
    ) -> None:
        self.failures = dict(failures)
        self.results = list(results)
        detail = "; ".join(
            f"shard {name!r}: {type(exc).__name__}: {exc}" for name, exc in self.failures.items()
        )
        super().__init__(f"{len(self.failures)} shard(s) failed: {detail}")


# --------------------------------------------------------------------------- ranges


def normalize_ranges(ranges: Iterable[Sequence[int]]) -> Ranges:
    """Sort and merge overlapping/adjacent inclusive ranges: [[5,9],[0,4]] → ((0,9),)."""
    pairs = []
    for r in ranges:
        lo, hi = _pair(r)
        pairs.append((lo, hi))
    merged: list[list[int]] = []
    for lo, hi in sorted(pairs):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


def _pair(r: Sequence[int]) -> Range:
    if isinstance(r, str | bytes) or len(r) != 2:
        raise ShardMapError(f"a vshard range must be [lo, hi], got {r!r}")
    lo, hi = r
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)):
        raise ShardMapError(f"vshard range bounds must be integers, got {list(r)!r}")
    if lo > hi:
        raise ShardMapError(f"vshard range [{lo}, {hi}] has lo > hi")
    return lo, hi


def subtract_ranges(a: Iterable[Sequence[int]], b: Iterable[Sequence[int]]) -> Ranges:
    """The vshards in `a` that are not in `b`."""
    out: list[Range] = []
    b_norm = normalize_ranges(b)
    for lo, hi in normalize_ranges(a):
        cur = lo
        for blo, bhi in b_norm:
            if bhi < cur or blo > hi:
                continue
            if blo > cur:
                out.append((cur, blo - 1))
            cur = max(cur, bhi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return normalize_ranges(out)


def _fmt_ranges(ranges: Iterable[Range]) -> str:
    return ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def vshard_of(key: int, virtual_shards: int = DEFAULT_VIRTUAL_SHARDS) -> int:
    """The virtual shard of a key (keys are non-negative integer ids)."""
    if key < 0:
        raise ValueError(f"shard keys must be non-negative, got {key}")
    return key % virtual_shards


# --------------------------------------------------------------------------- the map


@dataclass(frozen=True)
class PhysicalShard:
    """One database of a sharded source and the vshards it owns under a map version."""

    name: str
    vshards: Ranges
    url: str | None = None
    conn_id: str | None = None
    # Optional read replica of this shard (docs/sharding.md, Replicas), with optional
    # per-shard lag policy (None: the run's SOURCE_DB_REPLICA_* settings).
    replica_url: str | None = None
    replica_conn_id: str | None = None
    replica_max_lag_seconds: float | None = None
    replica_on_lag: str | None = None

    def resolve_url(self) -> str:
        """The shard's URL (its `url`, or its Airflow connection's URI)."""
        if self.url:
            return self.url
        assert self.conn_id
        uri = get_connection_uri(self.conn_id)
        assert uri is not None  # required=True raises ConfigError instead
        return uri

    def resolve_replica_url(self) -> str | None:
        """The URL of the shard's replica (`replica_url` or `replica_conn_id`), or None."""
        if self.replica_url:
            return self.replica_url
        if self.replica_conn_id:
            return get_connection_uri(self.replica_conn_id)
        return None

    def __repr__(self) -> str:  # never print a password
        where = f"url={_safe_url(self.url)!r}" if self.url else f"conn_id={self.conn_id!r}"
        if self.replica_url:
            where += f", replica_url={_safe_url(self.replica_url)!r}"
        elif self.replica_conn_id:
            where += f", replica_conn_id={self.replica_conn_id!r}"
        return f"PhysicalShard(name={self.name!r}, {where}, vshards={self.vshards!r})"


@dataclass(frozen=True)
class ShardMap:
    """A validated virtual-shard map: every vshard owned by exactly one physical shard."""

    virtual_shards: int
    version: int
    shards: tuple[PhysicalShard, ...]
    _owner: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.virtual_shards
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ShardMapError(f"virtual_shards must be a positive integer, got {n!r}")
        if not isinstance(self.version, int) or isinstance(self.version, bool):
            raise ShardMapError(f"version must be an integer, got {self.version!r}")
        if not self.shards:
            raise ShardMapError("the shard map has no shards")
        for shard in self.shards:
            if not shard.name or not isinstance(shard.name, str):
                raise ShardMapError(f"every shard needs a non-empty name, got {shard.name!r}")
        counts = Counter(s.name for s in self.shards)
        dupes = sorted(name for name, c in counts.items() if c > 1)
        if dupes:
            raise ShardMapError(f"shard names must be unique; repeated: {', '.join(dupes)}")
        owner: list[str | None] = [None] * n
        overlaps: dict[tuple[str, str], list[int]] = {}
        out_of_range: list[str] = []
        for shard in self.shards:
            if bool(shard.url) == bool(shard.conn_id):
                raise ShardMapError(f"shard {shard.name!r} needs exactly one of 'url' or 'conn_id'")
            _check_replica(shard)
            for lo, hi in shard.vshards:
                if lo < 0 or hi >= n:
                    out_of_range.append(f"{shard.name}: [{lo}, {hi}]")
                    continue
                for v in range(lo, hi + 1):
                    prev = owner[v]
                    if prev is not None:
                        overlaps.setdefault((prev, shard.name), []).append(v)
                    else:
                        owner[v] = shard.name
        if out_of_range:
            raise ShardMapError(f"vshard ranges outside [0, {n - 1}]: {'; '.join(out_of_range)}")
        if overlaps:
            detail = "; ".join(
                f"vshards {_fmt_ranges(normalize_ranges((v, v) for v in vs))} "
                f"assigned to both {a!r} and {b!r}"
                for (a, b), vs in overlaps.items()
            )
            raise ShardMapError(f"overlapping shard map (version {self.version}): {detail}")
        gaps = [v for v, o in enumerate(owner) if o is None]
        if gaps:
            raise ShardMapError(
                f"shard map (version {self.version}) leaves vshards unassigned: "
                f"{_fmt_ranges(normalize_ranges((v, v) for v in gaps))}"
            )
        object.__setattr__(self, "_owner", tuple(o for o in owner if o is not None))

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardMap:
        if not isinstance(data, Mapping):
            raise ShardMapError(f"a shard map is a mapping, got {type(data).__name__}")
        unknown = set(data) - {"virtual_shards", "version", "shards"}
        if unknown:
            raise ShardMapError(f"unknown shard map key(s): {', '.join(sorted(unknown))}")
        if "version" not in data:
            raise ShardMapError("the shard map has no 'version'")
        shards_raw = data.get("shards")
        if not isinstance(shards_raw, list):
            raise ShardMapError("the shard map needs a 'shards' list")
        shards = []
        for i, raw in enumerate(shards_raw):
            if not isinstance(raw, Mapping):
                raise ShardMapError(f"shards[{i}] must be a mapping, got {raw!r}")
            extra = set(raw) - {"name", "url", "conn_id", "vshards", *_REPLICA_KEYS}
            if extra:
                raise ShardMapError(
                    f"shard {raw.get('name', i)!r}: unknown key(s) {', '.join(sorted(extra))}"
                )
            vs = raw.get("vshards")
            if not isinstance(vs, list):
                raise ShardMapError(
                    f"shard {raw.get('name', i)!r}: 'vshards' must be a list of [lo, hi]"
                )
            try:
                ranges = normalize_ranges(vs)
            except ShardMapError as exc:
                raise ShardMapError(f"shard {raw.get('name', i)!r}: {exc}") from None
            shards.append(
                PhysicalShard(
                    name=raw.get("name"),
                    vshards=ranges,
                    url=raw.get("url"),
                    conn_id=raw.get("conn_id"),
                    **{k: raw[k] for k in _REPLICA_KEYS if raw.get(k) is not None},
                )
            )
        return cls(
            virtual_shards=data.get("virtual_shards", DEFAULT_VIRTUAL_SHARDS),
            version=data["version"],
            shards=tuple(shards),
        )

    @classmethod
    def load(cls, path: str | Path) -> ShardMap:
        """Read a map from a `.json`, `.yaml` or `.yml` file."""
        path = Path(path)
        text = path.read_text()
        try:
            if path.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:
            raise ShardMapError(f"{path}: cannot parse the shard map: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ShardMapError as exc:
            raise ShardMapError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The map as plain data (store it in the manifest of every shard's extract)."""
        shards = []
        for s in self.shards:
            d: dict[str, Any] = {"name": s.name}
            if s.url:
                d["url"] = s.url
            else:
                d["conn_id"] = s.conn_id
            d["vshards"] = [list(r) for r in s.vshards]
            d.update({k: getattr(s, k) for k in _REPLICA_KEYS if getattr(s, k) is not None})
            shards.append(d)
        return {"virtual_shards": self.virtual_shards, "version": self.version, "shards": shards}

    def to_public_dict(self) -> dict[str, Any]:
        """`to_dict` with passwords hidden (for manifests and logs)."""
        d = self.to_dict()
        for s in d["shards"]:
            for key in ("url", "replica_url"):
                if key in s:
                    s[key] = _safe_url(s[key])
        return d

    # -- lookups --------------------------------------------------------------------

    def shard(self, name: str) -> PhysicalShard:
        for s in self.shards:
            if s.name == name:
                return s
        raise KeyError(f"no shard {name!r} in shard map version {self.version}")

    def owner_of_vshard(self, vshard: int) -> PhysicalShard:
        return self.shard(self._owner[vshard])

    def shard_for_key(self, key: int) -> PhysicalShard:
        return self.owner_of_vshard(vshard_of(key, self.virtual_shards))

    def vshards_of(self, name: str) -> Ranges:
        """The vshards `name` owns here; () when the map has no such shard."""
        for s in self.shards:
            if s.name == name:
                return s.vshards
        return ()


_REPLICA_KEYS = ("replica_url", "replica_conn_id", "replica_max_lag_seconds", "replica_on_lag")
_ON_LAG = ("primary", "fail")


def _check_replica(shard: PhysicalShard) -> None:
    where = f"shard {shard.name!r}"
    if shard.replica_url and shard.replica_conn_id:
        raise ShardMapError(f"{where}: give 'replica_url' or 'replica_conn_id', not both")
    lag = shard.replica_max_lag_seconds
    if lag is not None and (isinstance(lag, bool) or not isinstance(lag, int | float) or lag < 0):
        raise ShardMapError(f"{where}: replica_max_lag_seconds={lag!r} must be a number >= 0")
    if shard.replica_on_lag is not None and shard.replica_on_lag not in _ON_LAG:
        raise ShardMapError(
            f"{where}: replica_on_lag={shard.replica_on_lag!r} is invalid; "
            f"valid: {', '.join(_ON_LAG)}"
        )


# --------------------------------------------------------------------------- predicates


def _mod_expr(key_column: str, modulus: int, dialect: str) -> str:
    if not _IDENT.match(key_column):
        raise ValueError(f"key column must be a plain identifier, got {key_column!r}")
    if dialect in _PERCENT_MOD_DIALECTS:
        return f"({key_column} % {modulus})"
    return f"mod({key_column}, {modulus})"  # Oracle, DB2, and the SQL standard


def shard_predicate(
    key_column: str,
    ranges: Iterable[Sequence[int]],
    dialect: str,
    *,
    virtual_shards: int = DEFAULT_VIRTUAL_SHARDS,
    param_prefix: str = "vs",
) -> tuple[str, dict[str, int]]:
    """SQL that keeps the rows whose key falls in `ranges` of vshards, with bound params.

    → `("((id % 1024) between :vs_lo_0 and :vs_hi_0 or ...)", {"vs_lo_0": 0, ...})`,
    for `sqlalchemy.text()` (named params; SQLAlchemy escapes `%` for the driver).
    An empty `ranges` gives a predicate that is always false.
    """
    if not isinstance(virtual_shards, int) or virtual_shards < 1:
        raise ValueError(f"virtual_shards must be a positive integer, got {virtual_shards!r}")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", param_prefix):
        raise ValueError(f"param_prefix must be an identifier, got {param_prefix!r}")
    norm = normalize_ranges(ranges)
    if not norm:
        return "(1 = 0)", {}
    mod = _mod_expr(key_column, virtual_shards, dialect)
    parts = []
    params: dict[str, int] = {}
    for i, (lo, hi) in enumerate(norm):
        parts.append(f"{mod} between :{param_prefix}_lo_{i} and :{param_prefix}_hi_{i}")
        params[f"{param_prefix}_lo_{i}"] = lo
        params[f"{param_prefix}_hi_{i}"] = hi
    return "(" + " or ".join(parts) + ")", params


def shard_filter(column: Any, ranges: Iterable[Sequence[int]], virtual_shards: int = 1024):
    """The same predicate as a SQLAlchemy expression over `column` (for `sa.select`)."""
    norm = normalize_ranges(ranges)
    if not norm:
        return sa.false()
    mod = column % virtual_shards
    return sa.or_(*(mod.between(lo, hi) for lo, hi in norm))


# --------------------------------------------------------------------------- extract


@dataclass(frozen=True)
class ShardResult:
    """What `read_fn` returned for one physical shard, with when it ran."""

    shard: str
    url: str
    vshards: Ranges
    map_version: int
    watermark_key: str
    value: Any
    started: float  # time.monotonic()
    finished: float

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def __repr__(self) -> str:
        return (
            f"ShardResult(shard={self.shard!r}, url={_safe_url(self.url)!r}, "
            f"vshards={self.vshards!r}, map_version={self.map_version}, "
            f"seconds={self.seconds:.3f})"
        )


ReadFn = Callable[[str, str, str, dict[str, int]], Any]


def extract_sharded(
    shard_map: ShardMap,
    read_fn: ReadFn,
    *,
    max_workers: int,
    key_column: str = "id",
) -> list[ShardResult]:
    """Run `read_fn(shard_name, url, predicate_sql, predicate_params)` for every physical
    shard of `shard_map` in parallel threads; each shard is restricted to the vshards the
    map gives it (shards with none are skipped). Results come back in map order.

    If any shard fails, the others still finish and `ShardExtractError` names every
    failed shard (the successful results are on the exception).
    Load the map once per run and pass that same object to every call of the run.
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    work = [s for s in shard_map.shards if s.vshards]
    results: dict[str, ShardResult] = {}
    failures: dict[str, BaseException] = {}
    lock = threading.Lock()

    def run(shard: PhysicalShard) -> None:
        url = ""
        started = time.monotonic()
        try:
            url = shard.resolve_url()
            dialect = _dialect_of(url)
            sql, params = shard_predicate(
                key_column, shard.vshards, dialect, virtual_shards=shard_map.virtual_shards
            )
            value = read_fn(shard.name, url, sql, params)
        except Exception as exc:  # reported per shard below
            with lock:
                failures[shard.name] = _masked(exc, url)
            log.error("shard %s failed: %s", shard.name, failures[shard.name])
            return
        finished = time.monotonic()
        with lock:
            results[shard.name] = ShardResult(
                shard=shard.name,
                url=url,
                vshards=shard.vshards,
                map_version=shard_map.version,
                watermark_key=watermark_shard_key(shard.name),
                value=value,
                started=started,
                finished=finished,
            )
        log.info(
            "shard %s (vshards %s, map v%d) read in %.2fs",
            shard.name,
            _fmt_ranges(shard.vshards),
            shard_map.version,
            finished - started,
        )

    with ThreadPoolExecutor(
        max_workers=min(max_workers, max(len(work), 1)), thread_name_prefix="shard"
    ) as pool:
        list(pool.map(run, work))
    ordered = [results[s.name] for s in work if s.name in results]
    if failures:
        ordered_failures = {s.name: failures[s.name] for s in work if s.name in failures}
        raise ShardExtractError(ordered_failures, ordered) from next(
            iter(ordered_failures.values())
        )
    return ordered


def _dialect_of(url: str) -> str:
    return sa.make_url(sqlalchemy_url(url)).get_backend_name()


def _safe_url(url: str | None) -> str:
    if not url:
        return ""
    return safe_url(url)


def _masked(exc: BaseException, url: str) -> BaseException:
    """Keep the exception unless its message carries one of the URL's secrets (the
    userinfo password, a `?password=` in the query string)."""
    if not url:
        return exc
    try:
        secrets = {str(sa.make_url(sqlalchemy_url(url)).password or "")}
    except Exception:
        secrets = set()
    secrets.update(secrets_in_uri(url))
    message = str(exc)
    found = sorted((s for s in secrets if s and s in message), key=len, reverse=True)
    if not found:
        return exc
    for secret in found:
        message = message.replace(secret, "***")
    masked = RuntimeError(f"{type(exc).__name__}: {message}")
    masked.__cause__ = None
    return masked


# --------------------------------------------------------------------------- watermarks


def watermark_shard_key(shard_name: str) -> str:
    """What identifies a shard's watermark (`ops.loaded_runs.shard`): its name.

    Not the map version: a shard's watermark is about its database's clock and commit
    order, which a map change does not touch. vshards that a map change gives to an
    existing shard are read in full once instead (`newly_assigned_vshards`), and a
    shard new to the map has no watermark, so it is read in full.
    """
    if not shard_name or not isinstance(shard_name, str):
        raise ValueError(f"a shard name is a non-empty string, got {shard_name!r}")
    return shard_name


def newly_assigned_vshards(old_map: ShardMap | None, new_map: ShardMap, shard: str) -> Ranges:
    """The vshards `shard` owns in `new_map` but did not own in `old_map`.

    `old_map` is the map of the shard's last loaded extract (None: never loaded, so
    everything it owns is new). Read these in full, without the watermark's lower bound:
    their rows were copied in from another database with their original `updated_at`,
    which can be older than this shard's watermark.
    """
    now = new_map.vshards_of(shard)
    if old_map is None:
        return now
    if old_map.virtual_shards != new_map.virtual_shards:
        return now  # a different modulus is a different key space: read everything
    return subtract_ranges(now, old_map.vshards_of(shard))


@dataclass(frozen=True)
class ShardReadPlan:
    """How to read one shard in this run."""

    shard: str
    watermark_key: str
    incremental_vshards: Ranges  # read with the shard's watermark window
    full_vshards: Ranges  # read with no lower bound (new shard, or newly assigned vshards)


def plan_shard_reads(
    current: ShardMap, previous: Mapping[str, ShardMap | None]
) -> dict[str, ShardReadPlan]:
    """Per shard: which vshards to read incrementally, which in full.

    `previous[watermark_key]` is the map recorded with that shard's last loaded extract
    (missing/None when it has none: then all its vshards are read in full, whatever
    watermark exists, since a watermark without its map cannot be trusted).
    """
    plans = {}
    for s in current.shards:
        key = watermark_shard_key(s.name)
        old = previous.get(key)
        full = newly_assigned_vshards(old, current, s.name)
        plans[s.name] = ShardReadPlan(
            shard=s.name,
            watermark_key=key,
            incremental_vshards=subtract_ranges(s.vshards, full),
            full_vshards=full,
        )
    return plans
