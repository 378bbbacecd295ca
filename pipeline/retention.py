"""Retention: what a successful night prunes from the data directory.

The policy is one YAML file (`config/retention.yml`, `RETENTION_CONFIG`): days to keep
per kind of file, counted back from the run's published horizon, and the number of
published warehouse versions kept for `make rollback`. Only files named by a business
day (`run=<YYYY-MM-DD>…`, `<YYYY-MM-DD>.html`, …) are candidates; anything else is left
alone. Never pruned: the running night's own files, the newest landed run of every
table (the schema-drift check compares with it), the FX cache, the published warehouse.
Also removed: what a killed write left in the landing (`.tmp-*`, `.old-*`, an hour old).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, fields
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

from core.run_ids import day_of, expired

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    """Days to keep per kind (0: keep all) and published versions to keep."""

    landing_runs_days: int = 30
    quarantine_days: int = 90
    run_folders_days: int = 30
    failed_builds_days: int = 7
    report_pages_days: int = 400
    warehouse_versions: int = 7
    ops_history_days: int = 400

    @classmethod
    def load(cls, path: Path | None) -> RetentionPolicy:
        """The policy of a YAML file (missing file or key: the defaults above)."""
        if path is None or not Path(path).exists():
            return cls()
        raw = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown retention key(s) {unknown}; valid: {sorted(known)}")
        for key, value in raw.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{path}: {key}={value!r} must be a whole number >= 0")
        return cls(**raw)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _newest_landed_runs(table_dir: Path) -> set[str]:
    """The run folder of the table's newest landing (by manifest), kept for drift checks."""
    from extract.landing import previous_manifest

    manifest = previous_manifest(table_dir.parent.parent, table_dir.parent.name, table_dir.name)
    return {f"run={manifest['run_id']}"} if manifest else set()


def _landing_candidates(landing: Path) -> list[tuple[Path, set[str]]]:
    """(folder, names never to prune) for every table and per-run record folder."""
    found = []
    for source in sorted(p for p in landing.iterdir() if p.is_dir()):
        for table in sorted(p for p in source.iterdir() if p.is_dir()):
            protected = set() if table.name.startswith("_") else _newest_landed_runs(table)
            found.append((table, protected))
    return found


def prune(
    data_dir: Path,
    warehouse_path: Path,
    policy: RetentionPolicy,
    *,
    horizon: date,
    run_id: str,
    dirs: dict[str, Path] | None = None,
) -> dict[str, list[str]]:
    """Remove what the policy lets go; return what was removed, per kind (paths relative
    to `data_dir` where they are under it). `dirs` overrides the `landing`, `quarantine`
    and `report` folders (LANDING_DIR, QUARANTINE_DIR, REPORT_DIR)."""
    data_dir, warehouse_path = Path(data_dir), Path(warehouse_path)
    where = {name: data_dir / name for name in ("landing", "quarantine", "report")}
    where.update({k: Path(v) for k, v in (dirs or {}).items()})
    removed: dict[str, list[str]] = {}
    run_day = day_of(run_id)

    def cut(kind: str, days: int, candidates: list[tuple[Path, set[str]]]) -> None:
        if days <= 0:
            return
        cutoff = horizon - timedelta(days=days - 1)
        for folder, protected in candidates:
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.name.startswith("_") or not expired(path.name, cutoff, run_day, protected):
                    continue
                _remove(path)
                removed.setdefault(kind, []).append(_shown(path, data_dir))

    landing, quarantine = where["landing"], where["quarantine"]
    if landing.is_dir():
        _prune_stale_temp(landing, removed, data_dir)
        cut("landing_runs", policy.landing_runs_days, _landing_candidates(landing))
    if quarantine.is_dir():
        tables = [t for s in quarantine.iterdir() if s.is_dir() for t in s.iterdir() if t.is_dir()]
        cut("quarantine", policy.quarantine_days, [(t, set()) for t in sorted(tables)])
    cut("run_folders", policy.run_folders_days, [(data_dir / "runs", set())])
    cut("report_pages", policy.report_pages_days, [(where["report"], set())])
    _prune_failed_builds(warehouse_path, policy, horizon, run_day, removed, data_dir)
    if policy.warehouse_versions:
        from warehouse.publish import prune_versions

        gone = prune_versions(warehouse_path, policy.warehouse_versions)
        if gone:
            removed["warehouse_versions"] = [p.name for p in gone]
    if "report_pages" in removed:
        from report.build import build_index

        build_index(where["report"])
    for kind, paths in removed.items():
        log.info("retention: removed %d %s (e.g. %s)", len(paths), kind, paths[0])
    return removed


STALE_TEMP_S = 3600.0
_TEMP_PREFIXES = (".tmp-", ".old-")


def _prune_stale_temp(
    landing: Path, removed: dict[str, list[str]], data_dir: Path, *, now: float | None = None
) -> None:
    """`.tmp-*` / `.old-*` entries of the landing's table folders untouched for an hour:
    what a killed write left (a half-written run folder, a pointer's temp file). Every
    writer replaces or removes its own on success or error; only a kill leaves one, and
    nothing reads them. Their age is the filesystem's (mtime against the wall clock)."""
    now = time.time() if now is None else now
    for source in sorted(p for p in landing.iterdir() if p.is_dir()):
        for table in sorted(p for p in source.iterdir() if p.is_dir()):
            for path in sorted(table.iterdir()):
                if not path.name.startswith(_TEMP_PREFIXES):
                    continue
                try:
                    age = now - path.lstat().st_mtime
                except FileNotFoundError:
                    continue
                if age > STALE_TEMP_S:
                    _remove(path)
                    removed.setdefault("stale_temp", []).append(_shown(path, data_dir))


def _prune_failed_builds(
    warehouse_path: Path,
    policy: RetentionPolicy,
    horizon: date,
    run_day: date | None,
    removed: dict[str, list[str]],
    data_dir: Path,
) -> None:
    """Build files of failed runs (`<warehouse>.<day>.build[.wal]`) older than the policy."""
    from warehouse.publish import BUILD_SUFFIX

    if policy.failed_builds_days <= 0 or not warehouse_path.parent.is_dir():
        return
    cutoff = horizon - timedelta(days=policy.failed_builds_days - 1)
    prefix = warehouse_path.name + "."
    for path in sorted(warehouse_path.parent.iterdir()):
        name = path.name
        if not name.startswith(prefix) or BUILD_SUFFIX not in name:
            continue
        if expired(name[len(prefix) :], cutoff, run_day, set()):
            _remove(path)
            removed.setdefault("failed_builds", []).append(_shown(path, data_dir))


def _shown(path: Path, data_dir: Path) -> str:
    try:
        return str(path.relative_to(data_dir))
    except ValueError:
        return str(path)


def summary(removed: dict[str, list[str]]) -> dict[str, Any]:
    """Counts per kind, for run stats and logs."""
    return {kind: len(paths) for kind, paths in removed.items()}
