"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

The data goes to a temp file beside the target (same folder, so the rename stays on one
file system; named `.tmp-<name>-<hex>`, which landing and mirror listings pass over), is flushed
and fsynced, then renamed over the target with `os.replace`. A failed write removes its
temp file and leaves the target as it was. Concurrent writers each use their own temp
file; the last rename wins whole.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def temp_path(path: Path, *, unique: bool = True) -> Path:
    """The temp name beside `path`: unique per call (`.tmp-<name>-<8 hex>`) for writers
    that may run at once; `unique=False` gives the fixed `.tmp-<name>`, for one writer of
    a large file, so a killed write leaves one leftover the next write replaces."""
    if not unique:
        return path.with_name(f".tmp-{path.name}")
    return path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable; a no-op where folders cannot be fsynced."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush `path`'s data to disk (a file another writer closed, e.g. a Parquet writer's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_with(
    path: Path,
    fill: Callable[[Path], Any],
    *,
    sync_dir: bool,
    unique: bool,
) -> Path:
    """The steps every atomic write shares: `fill(tmp)` writes and fsyncs the temp file
    beside `path`, which is then renamed over `path`; a failure removes the temp file
    and leaves `path` as it was; with `sync_dir` the rename is made durable too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, unique=unique)
    if not unique:
        tmp.unlink(missing_ok=True)  # a killed earlier write's leftover
    try:
        fill(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return path


def write_with(
    path: Path | str,
    write: Callable[[Path], Any],
    *,
    sync_dir: bool = False,
    unique: bool = True,
) -> Path:
    """Let `write(tmp)` produce the file (e.g. a Parquet writer), then rename it into place.

    For writers that want a path rather than bytes. The temp file is fsynced before the
    rename; with `sync_dir` the rename itself is made durable too; `unique`: see
    `temp_path`."""

    def fill(tmp: Path) -> None:
        write(tmp)
        fsync_file(tmp)

    return _replace_with(Path(path), fill, sync_dir=sync_dir, unique=unique)


def write_atomic(
    path: Path | str,
    data: bytes | str,
    *,
    mode: int = 0o666,
    sync_dir: bool = False,
) -> Path:
    """Replace `path` with `data` (str is written as UTF-8) in one step; return `path`.

    `mode` is the new file's permission before the umask (0o600: owner only, from the
    first byte on, for files holding secrets)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data

    def fill(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())

    return _replace_with(Path(path), fill, sync_dir=sync_dir, unique=True)


def write_json_atomic(
    path: Path | str,
    value: Any,
    *,
    indent: int | None = 2,
    default: Callable[[Any], Any] | None = None,
    mode: int = 0o666,
    sync_dir: bool = False,
) -> Path:
    """`value` as JSON with sorted keys (the same value gives the same bytes), atomically."""
    text = json.dumps(value, indent=indent, sort_keys=True, default=default)
    return write_atomic(path, text, mode=mode, sync_dir=sync_dir)
