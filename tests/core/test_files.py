"""Atomic file writes (core/files.py) on the real file system."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from core.files import temp_path, write_atomic, write_json_atomic, write_with


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


def test_bytes_and_text_replace_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "f.bin"  # missing folders are made
    assert write_atomic(target, b"\x00old") == target
    write_atomic(target, "nëw")
    assert target.read_bytes() == "nëw".encode()
    assert _leftovers(target.parent) == []


def test_json_is_sorted_and_indented_so_equal_values_give_equal_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json_atomic(a, {"b": 1, "a": [1, 2]})
    write_json_atomic(b, {"a": [1, 2], "b": 1})
    assert a.read_bytes() == b.read_bytes() == b'{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}'
    write_json_atomic(a, {"b": 1, "a": 2}, indent=None)
    assert a.read_text() == '{"a": 2, "b": 1}'
    with pytest.raises(TypeError):
        write_json_atomic(a, {"x": object()})  # nothing serialisable: the old file stays
    assert json.loads(a.read_text()) == {"a": 2, "b": 1}
    write_json_atomic(a, {"x": Path("p")}, default=str)
    assert json.loads(a.read_text()) == {"x": "p"}


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "t.parquet"
    target.write_bytes(b"published")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_with(target, half_then_fail)
    assert target.read_bytes() == b"published"
    assert _leftovers(tmp_path) == []


def test_write_with_hands_the_writer_a_temp_path_beside_the_target(tmp_path: Path) -> None:
    seen: list[Path] = []

    def writer(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("x")

    write_with(tmp_path / "out.csv", writer, sync_dir=True)
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".tmp-out.csv-")
    assert (tmp_path / "out.csv").read_text() == "x"
    assert not seen[0].exists()


def test_owner_only_mode_holds_from_the_first_byte(tmp_path: Path) -> None:
    target = tmp_path / "secret.json"
    target.write_text("{}")
    target.chmod(0o644)
    write_atomic(target, "{}", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_default_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "r.html", "<p>")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.html").stat().st_mode) == 0o644


def test_temp_names_are_unique_and_listing_skips_them(tmp_path: Path) -> None:
    names = {temp_path(tmp_path / "x.json").name for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith(".tmp-x.json-") for n in names)


def test_concurrent_writers_each_land_whole(tmp_path: Path) -> None:
    """Eight threads rewrite one file; a reader at any moment sees one writer's whole
    content, never a mix or a missing file."""
    target = tmp_path / "shared.txt"
    write_atomic(target, "0" * 10_000)
    bad: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            text = target.read_text()
            if len(set(text)) != 1 or len(text) != 10_000:
                bad.append(text[:20])

    def writer(n: int) -> None:
        for _ in range(50):
            write_atomic(target, str(n) * 10_000)

    r = threading.Thread(target=reader)
    r.start()
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(1, 9)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    r.join()
    assert bad == []
    assert _leftovers(tmp_path) == []
    assert len(set(target.read_text())) == 1


def test_a_single_writer_reuses_one_temp_name_so_kills_leave_one_leftover(tmp_path: Path) -> None:
    target = tmp_path / "w.duckdb"
    leftover = tmp_path / ".tmp-w.duckdb"
    leftover.write_bytes(b"a killed write's half")
    seen: list[Path] = []

    def copy(tmp: Path) -> None:
        seen.append(tmp)
        assert not tmp.exists()  # the leftover is gone before the write starts
        tmp.write_bytes(b"whole")

    write_with(target, copy, unique=False)
    assert seen == [leftover]
    assert target.read_bytes() == b"whole"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("writer", ["write_atomic", "write_with"])
def test_the_temp_file_is_fsynced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    from core import files

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(f"fsync {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
        real_fsync(fd)

    def replace(src: Path, dst: Path) -> None:
        events.append(f"replace {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    target = tmp_path / "out.json"

    def write(text: str, sync_dir: bool) -> None:
        if writer == "write_atomic":
            write_atomic(target, text, sync_dir=sync_dir)
        else:
            write_with(target, lambda tmp: tmp.write_text(text), sync_dir=sync_dir)

    write("{}", sync_dir=True)
    assert target.read_text() == "{}"
    assert [e.split("-out.json-")[0] for e in events] == [
        "fsync .tmp",
        "replace out.json",
        f"fsync {tmp_path.name}",
    ]
    events.clear()
    write("[]", sync_dir=False)
    assert [e.split(" ")[0] for e in events] == ["fsync", "replace"], "no folder fsync"
