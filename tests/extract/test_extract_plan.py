"""The extract's plan and its declared hook: what a `ReadHook` is given per read, and
what a sharded run refuses to take from the caller (it sets it per shard)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from extract.db_extract import (
    CursorWindow,
    ExtractPlan,
    Reader,
    ReadRequest,
    ShardScope,
    extract_sharded_source,
    extract_tables,
)
from extract.shards import ShardMap
from extract.tables import TableConfig


class RecordingHook:
    """A `ReadHook` that records the window of every read it wraps."""

    def __init__(self) -> None:
        self.windows: dict[str, list[CursorWindow | None]] = {}

    def __call__(self, reader: Reader, /) -> Reader:
        def read(conn: sa.Connection, request: ReadRequest, /):  # noqa: ANN202
            self.windows.setdefault(request.table.name, []).append(request.window)
            return reader(conn, request)

        return read


def _source(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'src.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for name in ("events", "kinds"):
            conn.execute(
                sa.text(f"create table {name} (id integer primary key, updated_at timestamp)")
            )
            conn.execute(
                sa.text(f"insert into {name} values (:id, :ts)"),
                [{"id": i, "ts": f"2026-11-2{i} 10:00:00"} for i in range(1, 4)],
            )
    engine.dispose()
    return url


def test_the_hook_gets_the_exact_window_of_incremental_reads_and_none_for_full(
    tmp_path: Path,
) -> None:
    hook = RecordingHook()
    configs = [TableConfig("events"), TableConfig("kinds", mode="full")]
    plan = ExtractPlan(
        run_id="r1",
        landing_root=tmp_path / "landing",
        warehouse_path=None,
        configs=configs,
        aggregates=hook,
    )
    manifests = extract_tables(_source(tmp_path), plan)
    assert {name: m["rows"] for name, m in manifests.items()} == {"events": 3, "kinds": 3}
    [window] = hook.windows["events"]
    assert window is not None and window.cursor == "updated_at" and window.lo is None
    assert window.hi.isoformat() == manifests["events"]["window_end"]
    assert window.hi > datetime(2026, 11, 23, 10, tzinfo=UTC)  # the source's clock U
    assert hook.windows["kinds"] == [None]


@pytest.mark.parametrize(
    "field, value",
    [
        ("shard", ShardScope("s0", 1024, {}, {}, {})),
        ("source_check", lambda conn, configs: ({}, None)),
    ],
)
def test_a_sharded_run_refuses_what_it_sets_per_shard(
    tmp_path: Path, field: str, value: Any
) -> None:
    shard_map = ShardMap.from_dict(
        {"version": 1, "shards": [{"name": "s0", "url": "sqlite://", "vshards": [[0, 1023]]}]}
    )
    plan = ExtractPlan(run_id="r1", landing_root=tmp_path, warehouse_path=None, **{field: value})
    with pytest.raises(ValueError, match=f"sets {field} per shard"):
        extract_sharded_source(shard_map, plan)
    assert not (tmp_path / "source_db").exists()  # refused before anything was written
