"""Landing zone: atomic run directories, manifests, the `_latest.json` pointer, schema drift."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from extract.landing import (
    LandingOptions,
    LandingTarget,
    SchemaDriftError,
    previous_manifest,
    read_latest_pointer,
    read_manifest,
    run_dir,
    write_landing_table,
)

BASE = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("total", pa.decimal128(12, 2)),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _table(schema: pa.Schema, n: int = 3) -> pa.Table:
    columns = {}
    for f in schema:
        if f.name == "id":
            columns[f.name] = list(range(n))
        elif pa.types.is_decimal(f.type):
            columns[f.name] = [Decimal(i) for i in range(n)]
        elif pa.types.is_timestamp(f.type):
            columns[f.name] = [1_700_000_000_000_000 + i for i in range(n)]
        elif pa.types.is_floating(f.type):
            columns[f.name] = [float(i) for i in range(n)]
        else:
            columns[f.name] = [f"v{i}" for i in range(n)]
    return pa.table({k: pa.array(v, type=schema.field(k).type) for k, v in columns.items()})


def _land(landing: Path, schema: pa.Schema, run_id: str, n: int = 3, **kw) -> dict:
    return write_landing_table(
        _table(schema, n).to_batches(max_chunksize=3),
        schema=schema,
        target=LandingTarget(landing, "source_db", "orders", run_id),
        options=LandingOptions(cursor_column="updated_at", **kw),
    )


def _table_dir(landing: Path) -> Path:
    return landing / "source_db" / "orders"


def _entries(landing: Path) -> list[str]:
    return sorted(p.name for p in _table_dir(landing).iterdir())


def test_manifest_and_pointer(tmp_path: Path) -> None:
    manifest = _land(tmp_path, BASE, "2024-03-01")
    assert manifest["rows"] == 3 and manifest["bytes"] > 0
    assert manifest["files"] == ["part-00000.parquet"]
    assert manifest["min_cursor"] < manifest["max_cursor"]
    assert len(manifest["schema_fingerprint"]) == 16 and len(manifest["checksum_sha256"]) == 64
    assert manifest["previous_run_id"] is None and manifest["added_columns"] == []
    assert read_manifest(tmp_path, "source_db", "orders", "2024-03-01") == manifest
    pointer = read_latest_pointer(tmp_path, "source_db", "orders")
    assert pointer is not None
    assert pointer["run_id"] == "2024-03-01" and pointer["run_dir"] == "run=2024-03-01"
    assert pointer["schema_fingerprint"] == manifest["schema_fingerprint"]
    assert _entries(tmp_path) == ["_latest.json", "run=2024-03-01"]


def test_added_column_is_carried(tmp_path: Path) -> None:
    _land(tmp_path, BASE, "2024-03-01")
    wider = BASE.append(pa.field("coupon", pa.string()))
    manifest = _land(tmp_path, wider, "2024-03-02")
    assert manifest["added_columns"] == [{"name": "coupon", "type": "string"}]
    assert manifest["previous_run_id"] == "2024-03-01"
    table = pq.read_table(run_dir(tmp_path, "source_db", "orders", "2024-03-02"))
    assert table.column("coupon").to_pylist() == ["v0", "v1", "v2"]
    # The next run compares with the wider schema: nothing new any more.
    assert _land(tmp_path, wider, "2024-03-03")["added_columns"] == []
    # Column order is not drift.
    reordered = pa.schema([wider.field(n) for n in reversed(wider.names)])
    assert _land(tmp_path, reordered, "2024-03-04")["added_columns"] == []


def test_dropped_column_fails_naming_it_before_anything_moves(tmp_path: Path) -> None:
    _land(tmp_path, BASE, "2024-03-01")
    before = read_manifest(tmp_path, "source_db", "orders", "2024-03-01")
    narrower = pa.schema([BASE.field("id"), BASE.field("updated_at")])
    with pytest.raises(SchemaDriftError) as info:
        _land(tmp_path, narrower, "2024-03-02")
    message = str(info.value)
    assert "source_db/orders" in message and "'total'" in message
    assert "decimal128(12, 2)" in message and "dropped" in message and "accept_drift" in message
    assert info.value.dropped == [("total", "decimal128(12, 2)")]
    assert info.value.table == "orders" and info.value.previous_run_id == "2024-03-01"
    # Nothing landed, no temp dirs; a failing rerun of an existing run keeps the old files.
    assert _entries(tmp_path) == ["_latest.json", "run=2024-03-01"]
    with pytest.raises(SchemaDriftError):
        _land(tmp_path, narrower, "2024-03-01")
    assert read_manifest(tmp_path, "source_db", "orders", "2024-03-01") == before
    assert _entries(tmp_path) == ["_latest.json", "run=2024-03-01"]


def test_retyped_column_fails_naming_old_and_new_type(tmp_path: Path) -> None:
    _land(tmp_path, BASE, "2024-03-01")
    retyped = BASE.set(1, pa.field("total", pa.float64()))
    with pytest.raises(SchemaDriftError) as info:
        _land(tmp_path, retyped, "2024-03-02")
    assert "column 'total' changed type from decimal128(12, 2) to double" in str(info.value)
    assert info.value.retyped == [("total", "decimal128(12, 2)", "double")]
    assert not run_dir(tmp_path, "source_db", "orders", "2024-03-02").exists()


def test_accept_drift_lands_and_becomes_the_new_baseline(tmp_path: Path) -> None:
    _land(tmp_path, BASE, "2024-03-01")
    changed = pa.schema([BASE.field("id"), pa.field("total", pa.float64())])
    manifest = _land(tmp_path, changed, "2024-03-02", accept_drift=True)
    assert manifest["accepted_drift"] == {
        "dropped": [{"name": "updated_at", "type": "timestamp[us, tz=UTC]"}],
        "retyped": [{"name": "total", "old_type": "decimal128(12, 2)", "new_type": "double"}],
    }
    assert pq.read_table(run_dir(tmp_path, "source_db", "orders", "2024-03-02")).num_rows == 3
    # Later runs, and a rerun of the accepted run, compare with the accepted schema.
    assert "accepted_drift" not in _land(tmp_path, changed, "2024-03-03")
    assert _land(tmp_path, changed, "2024-03-02")["previous_run_id"] == "2024-03-03"
    # check_drift=False skips the comparison altogether.
    unchecked = _land(tmp_path, BASE, "2024-03-04", check_drift=False)
    assert "added_columns" not in unchecked


def test_previous_is_the_newest_landing_not_the_largest_run_id(tmp_path: Path) -> None:
    _land(tmp_path, BASE, "2024-03-05")
    time.sleep(0.001)
    wider = BASE.append(pa.field("coupon", pa.string()))
    _land(tmp_path, wider, "2024-03-01", accept_drift=False)  # a backfill, landed later
    previous = previous_manifest(tmp_path, "source_db", "orders")
    assert previous is not None and previous["run_id"] == "2024-03-01"
    assert read_latest_pointer(tmp_path, "source_db", "orders")["run_id"] == "2024-03-01"  # type: ignore[index]
    with pytest.raises(SchemaDriftError, match="'coupon'"):
        _land(tmp_path, BASE, "2024-03-06")


def test_non_runs_are_ignored(tmp_path: Path) -> None:
    _land(tmp_path, BASE, "2024-03-01")
    table_dir = _table_dir(tmp_path)
    (table_dir / "_cache").mkdir()
    (table_dir / "_cache" / "2024-03-01.json").write_text("{}")
    bogus = {"run_id": "x", "extracted_at": "2999-01-01T00:00:00+00:00", "columns": []}
    for name in (".tmp-run=2024-03-09-abc", ".old-run=2024-03-08-abc", "_cache"):
        (table_dir / name).mkdir(exist_ok=True)
        (table_dir / name / "_manifest.json").write_text(json.dumps(bogus))
    (table_dir / "run=broken").mkdir()
    (table_dir / "run=broken" / "_manifest.json").write_text("{not json")
    (table_dir / "run=empty").mkdir()
    previous = previous_manifest(tmp_path, "source_db", "orders")
    assert previous is not None and previous["run_id"] == "2024-03-01"
    assert _land(tmp_path, BASE, "2024-03-02")["previous_run_id"] == "2024-03-01"


def test_side_files_travel_with_the_run_and_readers_skip_them(tmp_path: Path) -> None:
    manifest = _land(tmp_path, BASE, "r", extra_files={"_quarantine.jsonl": b'{"a": 1}\n'})
    run = run_dir(tmp_path, "source_db", "orders", "r")
    assert manifest["extra_files"] == ["_quarantine.jsonl"]
    assert manifest["files"] == ["part-00000.parquet"]
    assert (run / "_quarantine.jsonl").read_bytes() == b'{"a": 1}\n'
    assert pq.read_table(run).num_rows == 3  # pyarrow skips _ and . files
    con = duckdb.connect()
    try:  # the loader's pattern: <run>/*.parquet
        assert con.execute(f"select count(*) from read_parquet('{run}/*.parquet')").fetchone() == (
            3,
        )
    finally:
        con.close()
    _land(tmp_path, BASE, "r")  # a rerun without side files drops them
    assert sorted(p.name for p in run.iterdir()) == ["_manifest.json", "part-00000.parquet"]
    for bad in ("quarantine.jsonl", "_manifest.json", "_x.parquet", "_a/b"):
        with pytest.raises(ValueError, match="extra file"):
            _land(tmp_path, BASE, "r", extra_files={bad: b""})


def test_rerun_replaces_files(tmp_path: Path) -> None:
    first = _land(tmp_path, BASE, "2024-03-01", n=7, rows_per_file=3)
    run = run_dir(tmp_path, "source_db", "orders", "2024-03-01")
    assert first["files"] == [f"part-0000{i}.parquet" for i in range(3)]
    second = _land(tmp_path, BASE, "2024-03-01", n=2, rows_per_file=3)
    assert second["files"] == ["part-00000.parquet"] and second["rows"] == 2
    assert sorted(p.name for p in run.iterdir()) == ["_manifest.json", "part-00000.parquet"]
    assert pq.read_table(run).num_rows == 2
    assert _entries(tmp_path) == ["_latest.json", "run=2024-03-01"]  # no temp dirs left
    assert second["previous_run_id"] == "2024-03-01"


def test_empty_stream_lands_schema_and_checks_drift(tmp_path: Path) -> None:
    _land(tmp_path, BASE, "a")
    manifest = write_landing_table(
        iter([]),
        schema=BASE,
        target=LandingTarget(
            landing_root=tmp_path, source="source_db", table_name="orders", run_id="b"
        ),
    )
    assert manifest["rows"] == 0 and manifest["files"] == ["part-00000.parquet"]
    assert manifest["added_columns"] == []


def test_a_rerun_replaces_the_run_in_one_step_readers_never_see_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader listing and reading the run while reruns replace it always finds a whole
    run. Each rename is slowed down, so a replacement made of two renames (old run aside,
    new run in) would show the gap between them; the exchange has none."""
    import os
    import threading

    import extract.landing as landing

    real_rename = os.rename

    def slow_rename(src: object, dst: object) -> None:
        real_rename(src, dst)  # type: ignore[arg-type]
        time.sleep(0.02)

    _land(tmp_path, BASE, "2024-03-01", n=7, rows_per_file=3)
    run = run_dir(tmp_path, "source_db", "orders", "2024-03-01")
    monkeypatch.setattr(landing.os, "rename", slow_rename)
    done = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        while not done.is_set():
            try:
                manifest = json.loads((run / "_manifest.json").read_text())
                missing = [f for f in manifest["files"] if not (run / f).is_file()]
                seen.append(f"files missing: {missing}" if missing else "ok")
            except (FileNotFoundError, NotADirectoryError) as exc:
                seen.append(f"no run: {exc}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(15):
            _land(tmp_path, BASE, "2024-03-01", n=7, rows_per_file=3)
    finally:
        done.set()
        thread.join()
    assert seen and set(seen) == {"ok"}, sorted(set(seen))[:3]
    assert _entries(tmp_path) == ["_latest.json", "run=2024-03-01"]  # nothing left behind
    assert pq.read_table(run).num_rows == 7


def test_without_the_exchange_the_rerun_falls_back_and_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import extract.landing as landing

    _land(tmp_path, BASE, "2024-03-01", n=3)
    monkeypatch.setattr(landing, "_exchange", lambda a, b: False)
    manifest = _land(tmp_path, BASE, "2024-03-01", n=2)
    assert manifest["rows"] == 2
    assert pq.read_table(run_dir(tmp_path, "source_db", "orders", "2024-03-01")).num_rows == 2
    assert "atomic directory exchange unavailable" in caplog.text
    assert _entries(tmp_path) == ["_latest.json", "run=2024-03-01"]


def test_landed_files_and_directories_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import extract.landing as landing

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(landing.os, "fsync", fsync)
    _land(tmp_path, BASE, "2024-03-01")
    _land(tmp_path, BASE, "2024-03-01")
    names = [Path(p).name for p in synced]
    assert names.count("part-00000.parquet") == 2 and names.count("_manifest.json") == 2
    assert str(_table_dir(tmp_path)) in synced  # the renames are durable
    assert any(Path(p).name.startswith(".tmp-_latest.json") for p in synced)


@pytest.mark.parametrize(
    ("old", "new", "lossless"),
    [
        ("decimal128(12, 2)", "decimal128(14, 2)", True),  # numeric(12,2) -> (14,2)
        ("decimal128(12, 2)", "decimal128(14, 4)", True),  # same integer digits, more scale
        ("decimal128(14, 2)", "decimal128(12, 2)", False),
        ("decimal128(12, 2)", "decimal128(12, 3)", False),  # one integer digit fewer
        ("decimal128(12, 2)", "decimal128(14, 1)", False),  # a decimal lost
        ("int32", "int64", True),
        ("int64", "int32", False),
        ("uint32", "int64", True),
        ("int32", "uint64", False),
        ("float", "double", True),
        ("double", "float", False),
        ("int32", "double", True),
        ("int64", "double", False),
        ("string", "large_string", True),
        ("timestamp[ms, tz=UTC]", "timestamp[us, tz=UTC]", True),
        ("timestamp[us, tz=UTC]", "timestamp[ns, tz=UTC]", False),
        ("timestamp[us]", "timestamp[us, tz=UTC]", False),
        ("decimal128(12, 2)", "double", False),
        ("int64", "string", False),
    ],
)
def test_lossless_widening(old: str, new: str, lossless: bool) -> None:
    from extract.landing import lossless_widening

    assert lossless_widening(old, new) is lossless


def test_a_lossless_widening_lands_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _land(tmp_path, BASE, "2024-03-01")
    wider = BASE.set(1, pa.field("total", pa.decimal128(14, 2)))
    manifest = _land(tmp_path, wider, "2024-03-02")
    assert manifest["widened_columns"] == [
        {"name": "total", "old_type": "decimal128(12, 2)", "new_type": "decimal128(14, 2)"}
    ]
    assert "accepted_drift" not in manifest
    assert "lossless widening since run=2024-03-01 accepted: column 'total' from " in caplog.text
    # narrowing back is not lossless: it stops, naming the switch
    with pytest.raises(SchemaDriftError) as info:
        _land(tmp_path, BASE, "2024-03-03")
    message = str(info.value)
    assert "column 'total' changed type from decimal128(14, 2) to decimal128(12, 2)" in message
    assert "ACCEPT_SCHEMA_DRIFT=orders.total" in message and "accept_schema_drift" in message


def test_the_operator_accepts_drift_per_column(tmp_path: Path) -> None:
    _land(tmp_path, BASE, "2024-03-01")
    changed = pa.schema([BASE.field("id"), pa.field("total", pa.float64())])
    with pytest.raises(SchemaDriftError) as info:  # only one of the two changes accepted
        _land(tmp_path, changed, "2024-03-02", accept_drift=["orders.total", "users.x"])
    assert info.value.dropped == [("updated_at", "timestamp[us, tz=UTC]")]
    assert info.value.retyped == [] and info.value.accept_with == "orders.updated_at"
    assert "ACCEPT_SCHEMA_DRIFT=orders.updated_at" in str(info.value)
    manifest = _land(
        tmp_path, changed, "2024-03-02", accept_drift=["orders.total", "orders.updated_at"]
    )
    assert manifest["accepted_drift"]["retyped"] == [
        {"name": "total", "old_type": "decimal128(12, 2)", "new_type": "double"}
    ]
    back = _land(tmp_path, BASE, "2024-03-03", accept_drift=["orders.*"])
    assert [c["name"] for c in back["accepted_drift"]["retyped"]] == ["total"]
