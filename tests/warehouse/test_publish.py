"""Write-audit-publish by file swap: readers never see a partial build, never block it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from warehouse.publish import (
    PublishConflictError,
    abandon_build,
    begin_build,
    build_path_for,
    publish_build,
)


def _write(path: Path, value: int) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute("create schema if not exists analytics")
        con.execute("create or replace table analytics.t as select ? as v", [value])
    finally:
        con.close()


def _read_in_subprocess(path: Path) -> int:
    code = f"import duckdb; print(duckdb.connect({str(path)!r}, read_only=True).execute('select v from analytics.t').fetchone()[0])"
    return int(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )


def test_first_build_publishes_a_new_warehouse(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    build = begin_build(warehouse, "2026-11-27")
    assert build == build_path_for(warehouse, "2026-11-27") and not build.exists()
    _write(build, 1)
    assert not warehouse.exists(), "nothing is published before publish_build"
    publish_build(build, warehouse)
    assert not build.exists()
    assert _read_in_subprocess(warehouse) == 1


def test_open_reader_keeps_old_data_and_new_readers_see_the_new(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    _write(warehouse, 1)
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, duckdb
                con = duckdb.connect({str(warehouse)!r}, read_only=True)
                print(con.execute('select v from analytics.t').fetchone()[0], flush=True)
                sys.stdin.readline()  # wait while the writer builds and publishes
                print(con.execute('select v from analytics.t').fetchone()[0], flush=True)
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "1"
        build = begin_build(warehouse, "run")  # not blocked by the open reader
        _write(build, 2)
        publish_build(build, warehouse)
        assert _read_in_subprocess(warehouse) == 2
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "1", "an open reader saw a swap mid-query"
    finally:
        reader.kill()
        reader.wait()


def test_failed_or_killed_build_leaves_published_data_untouched(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    _write(warehouse, 1)
    before = warehouse.read_bytes()
    build = begin_build(warehouse, "run")
    # a writer killed mid-build: it leaves a build file (and maybe a WAL) behind
    code = (
        f"import duckdb, os; con = duckdb.connect({str(build)!r}); "
        "con.execute('begin'); con.execute('update analytics.t set v = 99'); os._exit(9)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert warehouse.read_bytes() == before
    assert _read_in_subprocess(warehouse) == 1
    # the rerun starts from the published state again, not from the dead build
    build = begin_build(warehouse, "run")
    assert _read_in_subprocess(build) == 1
    abandon_build(build)
    assert not build.exists()
    assert _read_in_subprocess(warehouse) == 1


def test_publish_refuses_a_build_with_an_open_wal(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    build = begin_build(warehouse, "run")
    _write(build, 1)
    build.with_name(build.name + ".wal").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="write-ahead log"):
        publish_build(build, warehouse)
    assert not warehouse.exists()


def test_a_build_from_an_older_published_state_is_not_published(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    first = begin_build(warehouse, "a")
    second = begin_build(warehouse, "b")  # both start from "nothing published"
    _write(first, 1)
    _write(second, 2)
    publish_build(first, warehouse)
    with pytest.raises(PublishConflictError, match=r"changed since warehouse\.duckdb\.b\.build"):
        publish_build(second, warehouse)
    assert _read_in_subprocess(warehouse) == 1  # the first publish stands
    again = begin_build(warehouse, "b")  # the rerun starts from what is published now
    _write(again, 2)
    publish_build(again, warehouse)
    assert _read_in_subprocess(warehouse) == 2
    assert not list(tmp_path.glob("*.base")), "a published or restarted build leaves no record"


def test_build_copy_falls_back_to_a_full_copy_without_reflinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from warehouse import publish

    warehouse = tmp_path / "warehouse.duckdb"
    _write(warehouse, 1)
    calls = []

    def refuse(fd: int, request: int, arg: int) -> None:
        calls.append(request)
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(publish.fcntl, "ioctl", refuse)
    target = tmp_path / "copy.duckdb"
    assert publish.clone_file(warehouse, target) == "copy"
    assert calls == [publish.FICLONE]
    assert target.read_bytes() == warehouse.read_bytes()
    build = begin_build(warehouse, "run")
    assert build.read_bytes() == warehouse.read_bytes()
    _write(build, 2)
    publish_build(build, warehouse)
    assert _read_in_subprocess(warehouse) == 2


def test_build_copy_is_a_reflink_where_the_filesystem_makes_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import os

    from warehouse import publish

    warehouse = tmp_path / "warehouse.duckdb"
    _write(warehouse, 1)
    before = warehouse.read_bytes()

    def clone(fd: int, request: int, src_fd: int) -> None:  # what FICLONE leaves behind
        assert request == publish.FICLONE
        os.write(fd, os.pread(src_fd, os.fstat(src_fd).st_size, 0))

    monkeypatch.setattr(publish.fcntl, "ioctl", clone)
    with caplog.at_level(logging.INFO, logger="warehouse.publish"):
        build = begin_build(warehouse, "run")
    assert "(reflink)" in caplog.text
    _write(build, 2)  # the build is its own file: the published one is untouched
    assert warehouse.read_bytes() == before
    publish_build(build, warehouse)
    assert _read_in_subprocess(warehouse) == 2


def test_a_reflink_error_other_than_unsupported_fails_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from warehouse import publish

    warehouse = tmp_path / "warehouse.duckdb"
    _write(warehouse, 1)

    def broken(fd: int, request: int, arg: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(publish.fcntl, "ioctl", broken)
    with pytest.raises(OSError, match="Input/output"):
        begin_build(warehouse, "run")
    assert _read_in_subprocess(warehouse) == 1


def test_a_kept_version_is_durable_before_its_name_even_as_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without hard links the version is a full copy: its data is fsynced before the
    rename that lists it, and the folder after."""
    import os

    from warehouse.publish import list_versions, versions_dir

    warehouse = tmp_path / "warehouse.duckdb"
    build = begin_build(warehouse, "r1")
    _write(build, 1)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def no_links(src: object, dst: object) -> None:
        raise OSError("no hard links here")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", no_links)
    publish_build(build, warehouse, version="r1")
    [(run, version)] = list_versions(warehouse)
    assert run == "r1" and version.stat().st_ino != warehouse.stat().st_ino  # a copy
    folder = versions_dir(warehouse)
    copies = [p for p in synced if Path(p).parent == folder and Path(p).name.startswith(".tmp-")]
    assert len(copies) == 1, synced  # the copy, under its temp name before the rename
    assert synced[-1] == str(folder)  # then the rename itself
    assert sorted(p.name for p in folder.iterdir()) == [version.name]
