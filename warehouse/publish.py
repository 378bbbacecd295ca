"""Write-audit-publish by file swap.

DuckDB allows one writing process per file, and a writer holds a lock that keeps other
processes from even opening the file. So the nightly run never writes the published
warehouse file: it copies it to a build file next to it (`begin_build`), loads, builds
and checks there, and only a fully passing build replaces the published file in one
atomic `rename` (`publish_build`). Analysts' connections opened before the swap keep
reading yesterday's file (POSIX keeps the old inode alive); new connections see the
new one. A failed, killed or crashed run leaves the published file exactly as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

BUILD_SUFFIX = ".build"


def build_path_for(warehouse_path: Path, run_id: str) -> Path:
    """Where the run's build copy lives (same directory: rename stays atomic)."""
    warehouse_path = Path(warehouse_path)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in run_id)
    return warehouse_path.with_name(f"{warehouse_path.name}.{safe}{BUILD_SUFFIX}")


def begin_build(warehouse_path: Path, run_id: str) -> Path:
    """Start a build: a fresh copy of the published warehouse (or an empty path)."""
    warehouse_path = Path(warehouse_path)
    build = build_path_for(warehouse_path, run_id)
    _remove(build)  # a previous attempt of this run left it behind: start over
    warehouse_path.parent.mkdir(parents=True, exist_ok=True)
    if warehouse_path.exists():
        started = time.perf_counter()
        tmp = build.with_name(build.name + ".tmp")
        shutil.copyfile(warehouse_path, tmp)
        wal = warehouse_path.with_name(warehouse_path.name + ".wal")
        if wal.exists():  # a writer was killed: its WAL is part of the committed state
            shutil.copyfile(wal, tmp.with_name(tmp.name + ".wal"))
            os.replace(tmp.with_name(tmp.name + ".wal"), build.with_name(build.name + ".wal"))
        os.replace(tmp, build)
        log.info(
            "build copy %s (%.1f MiB) in %.2fs",
            build.name,
            build.stat().st_size / 2**20,
            time.perf_counter() - started,
        )
    return build


def publish_build(build: Path, warehouse_path: Path) -> float:
    """Atomically make the build the published warehouse; return the swap's seconds."""
    build, warehouse_path = Path(build), Path(warehouse_path)
    if not build.exists():
        raise FileNotFoundError(f"no build to publish at {build}")
    build_wal = build.with_name(build.name + ".wal")
    if build_wal.exists():
        raise RuntimeError(
            f"{build} has an open or unclean write-ahead log ({build_wal.name}): "
            "close every connection to the build before publishing"
        )
    _fsync(build)
    started = time.perf_counter()
    os.replace(build, warehouse_path)
    _fsync_dir(warehouse_path.parent)
    seconds = time.perf_counter() - started
    stale_wal = warehouse_path.with_name(warehouse_path.name + ".wal")
    if stale_wal.exists():  # belonged to the replaced file; its content is in the build
        stale_wal.unlink()
    log.info("published %s in %.4fs", warehouse_path.name, seconds)
    return seconds


def abandon_build(build: Path) -> None:
    """Drop a build that will not be published (the published file is untouched)."""
    _remove(Path(build))


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal"), path.with_name(path.name + ".tmp")):
        p.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # some filesystems cannot fsync a directory
        pass
