"""Write-audit-publish by file swap.

DuckDB allows one writing process per file, and a writer holds a lock that keeps other
processes from even opening the file. So the nightly run never writes the published
warehouse file: it copies it to a build file next to it (`begin_build`), loads, builds
and checks there, and only a fully passing build replaces the published file in one
atomic `rename` (`publish_build`). Analysts' connections opened before the swap keep
reading yesterday's file (POSIX keeps the old inode alive); new connections see the
new one. A failed, killed or crashed run leaves the published file exactly as it was.

A publish succeeds only if the published file is still the one the build was copied
from (`<build>.base` records it): a second run that started from the same state, or
a rerun racing the scheduled night, fails with PublishConflictError instead of
silently reverting the other run's publish. Publishers take `<warehouse>.publish.lock`
for the check and the rename, and a run working under the warehouse's lease
(warehouse/lease.py) publishes only while that lease is still its own.

Every nightly publish also keeps its file as a version (`<warehouse>.versions/`, a hard
link: no copy), the last N of them, for `make rollback` (warehouse/rollback.py).

The build copy is a reflink where the filesystem has them (XFS with reflink, btrfs,
bcachefs, OCFS2; `cp --reflink=auto`): the build shares the published file's blocks
until it writes its own, so beginning a build costs what the night changes, not the
size of the history; the published file and the versions are never written through it
(copy-on-write). Elsewhere (ext4, tmpfs, a network filesystem) it is a full copy.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import time
from datetime import date
from pathlib import Path
from typing import Any

from core import run_ids
from core.files import fsync_dir, fsync_file, write_with

log = logging.getLogger(__name__)

BUILD_SUFFIX = ".build"
VERSIONS_SUFFIX = ".versions"


def build_path_for(warehouse_path: Path, run_id: str) -> Path:
    """Where the run's build copy lives (same directory: rename stays atomic)."""
    warehouse_path = Path(warehouse_path)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in run_id)
    return warehouse_path.with_name(f"{warehouse_path.name}.{safe}{BUILD_SUFFIX}")


class PublishConflictError(RuntimeError):
    """The published warehouse changed since the build began: another run published."""


def published_identity(path: Path) -> dict[str, int] | None:
    """What tells one published file from the next (every publish is a new inode)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return {"inode": st.st_ino, "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def _base_path(build: Path) -> Path:
    return build.with_name(build.name + ".base")


def record_base(build: Path, warehouse_path: Path, base: dict[str, int] | None) -> None:
    """Remember which published file `build` started from (checked by publish_build)."""
    _base_path(build).write_text(json.dumps({"published": base}))


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int), the reflink ioctl (cp --reflink)
# a filesystem or file pair that cannot share blocks: copy instead
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}


def clone_file(src: Path, dst: Path) -> str:
    """`dst` as a copy of `src`: a reflink (shared blocks, copy-on-write) where the
    filesystem makes one, else a full copy; returns "reflink" or "copy". `dst` is
    written whole either way (created or truncated first)."""
    if hasattr(fcntl, "ioctl"):
        with open(src, "rb") as source, open(dst, "wb") as target:
            try:
                fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
                return "reflink"
            except OSError as exc:
                if exc.errno not in _NO_REFLINK:
                    raise
    shutil.copyfile(src, dst)
    return "copy"


def begin_build(warehouse_path: Path, run_id: str) -> Path:
    """Start a build: a fresh copy of the published warehouse (or an empty path)."""
    warehouse_path = Path(warehouse_path)
    build = build_path_for(warehouse_path, run_id)
    _remove(build)  # a previous attempt of this run left it behind: start over
    warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    base = published_identity(warehouse_path)
    if base is not None:
        started = time.perf_counter()
        # Not core.files.write_with: `<build>.tmp` is one of the build's files (`_remove`,
        # retention), and the copy is fsynced once, at publish, not here as well.
        tmp = build.with_name(build.name + ".tmp")
        for _ in range(5):  # a publish during the copy: copy the new file again
            how = clone_file(warehouse_path, tmp)
            copied, base = base, published_identity(warehouse_path)
            if copied == base:
                break
        else:
            raise PublishConflictError(
                f"{warehouse_path} kept changing while it was copied: another run is publishing"
            )
        wal = warehouse_path.with_name(warehouse_path.name + ".wal")
        if wal.exists():  # a writer was killed: its WAL is part of the committed state
            shutil.copyfile(wal, tmp.with_name(tmp.name + ".wal"))
            os.replace(tmp.with_name(tmp.name + ".wal"), build.with_name(build.name + ".wal"))
        os.replace(tmp, build)
        log.info(
            "build copy %s (%.1f MiB) in %.2fs (%s)",
            build.name,
            build.stat().st_size / 2**20,
            time.perf_counter() - started,
            how,
        )
    record_base(build, warehouse_path, base)
    return build


def publish_build(
    build: Path, warehouse_path: Path, *, version: str | None = None, keep: int = 0
) -> float:
    """Atomically make the build the published warehouse; return the swap's seconds.

    `version` (a run id): also keep the published file as a version, then prune the
    versions to the newest `keep` (0: keep all)."""
    build, warehouse_path = Path(build), Path(warehouse_path)
    if not build.exists():
        raise FileNotFoundError(f"no build to publish at {build}")
    build_wal = build.with_name(build.name + ".wal")
    if build_wal.exists():
        raise RuntimeError(
            f"{build} has an open or unclean write-ahead log ({build_wal.name}): "
            "close every connection to the build before publishing"
        )
    fsync_file(build)
    lock_path = warehouse_path.with_name(warehouse_path.name + ".publish.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one publisher at a time: check, then rename
        from warehouse.lease import check_held

        check_held(warehouse_path)  # a run whose lease was taken over never publishes
        _check_base(build, warehouse_path)
        started = time.perf_counter()
        os.replace(build, warehouse_path)
        fsync_dir(warehouse_path.parent)
        seconds = time.perf_counter() - started
        _base_path(build).unlink(missing_ok=True)
        stale_wal = warehouse_path.with_name(warehouse_path.name + ".wal")
        if stale_wal.exists():  # belonged to the replaced file; its content is in the build
            stale_wal.unlink()
        log.info("published %s in %.4fs", warehouse_path.name, seconds)
        if version is not None:
            _keep_version(warehouse_path, version)
            if keep:
                prune_versions(warehouse_path, keep)
    return seconds


def _check_base(build: Path, warehouse_path: Path) -> None:
    """PublishConflictError when another publish happened since `build` began."""
    try:
        recorded = json.loads(_base_path(build).read_text())["published"]
    except FileNotFoundError:
        return  # a build made without begin_build: nothing to compare with
    current = published_identity(warehouse_path)
    if recorded != current:
        when = (
            "none"
            if current is None
            else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(current["mtime_ns"] / 1e9))
        )
        raise PublishConflictError(
            f"not published: {warehouse_path} changed since {build.name} was copied from it "
            f"(another run published it at {when}); this build would revert that publish. "
            "Rerun the day: it starts from what is published now."
        )


def versions_dir(warehouse_path: Path) -> Path:
    warehouse_path = Path(warehouse_path)
    return warehouse_path.with_name(warehouse_path.name + VERSIONS_SUFFIX)


def _keep_version(warehouse_path: Path, run_id: str) -> Path:
    """Hard-link the just-published file as `<UTC stamp>__<run id>.duckdb`: the published
    file is never written in place, so the link stays that version."""
    from core import clock

    folder = versions_dir(warehouse_path)
    folder.mkdir(exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in run_id)
    target = folder / f"{run_ids.stamp(clock.now())}__{safe}.duckdb"

    def link_or_copy(tmp: Path) -> None:
        try:
            os.link(warehouse_path, tmp)
        except OSError:  # no hard links on this filesystem: a copy
            shutil.copyfile(warehouse_path, tmp)

    # A same-named version (same run, same stamp: a pinned clock) is replaced by the
    # rename, never written in place: it may be another version's inode or a reader's
    # file. The temp name (`.tmp-<version>-<hex>`) is no version to `list_versions`.
    return write_with(target, link_or_copy, sync_dir=True)


def list_versions(warehouse_path: Path) -> list[tuple[str, Path]]:
    """Kept versions as (run id, path), oldest first."""
    folder = versions_dir(warehouse_path)
    if not folder.is_dir():
        return []
    found = sorted(p for p in folder.glob("*__*.duckdb") if p.is_file())
    return [(p.stem.split("__", 1)[1], p) for p in found]


def prune_versions(warehouse_path: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` versions (never the published file); return them."""
    versions = list_versions(warehouse_path)
    removed = []
    for _, path in versions[: max(0, len(versions) - keep)]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


_LAST_DAY_SOURCES = (
    ("ops", "pipeline_runs", "business_date"),
    ("analytics", "sales_summary", "date"),
    ("analytics", "daily_sales", "date"),
)


def last_published_day(where: Any, build: Any = None) -> date | None:
    """The last business day a published run covered (None: nothing published yet).

    The latest run's day in `ops.pipeline_runs`, or a later day in a published table
    (a warehouse from a release that did not record runs). `where`: a DuckDB file (a
    published file or a build file, read-only) or a `Warehouse`, whose published state
    is read, or its `build`'s when one is given.
    """
    from warehouse.backends import as_warehouse
    from warehouse.backends.base import quote_ident

    wh = as_warehouse(where)
    if wh.kind == "duckdb":
        file = build.path if build is not None else wh.path
        if file is None or not Path(file).exists():
            return None
    actual = {  # the published name, or the build's (None: a schema it does not have)
        schema: build.schemas.get(schema) if build is not None else schema
        for schema, _, _ in _LAST_DAY_SOURCES
    }
    listed = wh.read_arrow(
        "select table_schema, table_name from information_schema.tables", build=build
    )
    found = set(zip(*(c.to_pylist() for c in listed.columns), strict=True))
    if wh.kind == "snowflake":  # its catalog holds the upper-case (physical) names
        found = {(s.lower(), t.lower()) for s, t in found}
    present = [
        (actual[schema], table, column)
        for schema, table, column in _LAST_DAY_SOURCES
        if (actual[schema], table) in found
    ]
    if not present:
        return None
    days = wh.read_arrow(
        "select "
        + ", ".join(
            f"(select max({quote_ident(column)}) "
            f"from {quote_ident(schema)}.{quote_ident(table)}) as d{i}"
            for i, (schema, table, column) in enumerate(present)
        ),
        build=build,
    ).to_pylist()[0]
    return max((d for d in days.values() if d is not None), default=None)


def abandon_build(build: Path) -> None:
    """Drop a build that will not be published (the published file is untouched)."""
    _remove(Path(build))


def _remove(path: Path) -> None:
    for suffix in ("", ".wal", ".tmp", ".base"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
