"""Hard deletes found through key-range summaries (warehouse.load), on DuckDB and PostgreSQL.

The loader compares the source's key set with the warehouse per range of keys (count,
sum, hash sum) and reads keys only in the ranges that differ. These tests pin both
sides of that: every delete is found (in old history, or hidden behind a key the
warehouse never had), and a night without deletes compares no key at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from warehouse.backends.duckdb import DuckDBWarehouse
from warehouse.backends.postgres import PostgresWarehouse
from warehouse.guards import DeleteLimit, MassDeleteError, MassDeleteGuard
from warehouse.load import RANGE_KEYS, SourceLoadPlan, load_source_db

UTC = dt.UTC
TS = pa.timestamp("us", tz="UTC")
TZ = "UTC"
ITEMS = 5_000  # about ten ranges of RANGE_KEYS
DAY0 = dt.datetime(2024, 1, 1, tzinfo=UTC)


def _land(landing: Path, table: str, run_id: str, data: pa.Table, **extra: Any) -> None:
    """A landed run as the loader reads it: a Parquet file and its manifest."""
    directory = landing / "source_db" / table / f"run={run_id}"
    directory.mkdir(parents=True)
    path = directory / "part-00000.parquet"
    pq.write_table(data, path)
    manifest = {"mode": "incremental", "key": "id", "cursor_key": "updated_at", **extra}
    manifest.update(
        rows=data.num_rows, checksum_sha256=hashlib.sha256(path.read_bytes()).hexdigest()
    )
    (directory / "_manifest.json").write_text(json.dumps(manifest))


def _order_of(item: int) -> int:
    return (item + 1) // 2  # two items an order


def _day_of(order: int) -> dt.datetime:
    return DAY0 + dt.timedelta(days=order // 100)  # 100 orders a day


def land_night(
    landing: Path,
    run_id: str,
    night: int,
    *,
    item_ids: list[int],
    order_ids: list[int],
    source_item_keys: list[int],
) -> None:
    """Night `night`: the given items and orders (new or changed) and the source's whole
    `order_items` key set."""
    stamp = DAY0 + dt.timedelta(days=400 + night)
    window = {"window_end": (stamp + dt.timedelta(hours=1)).isoformat()}
    empty = {"id": pa.array([], pa.int64()), "updated_at": pa.array([], TS)}
    _land(
        landing, "users", run_id, pa.table({**empty, "region": pa.array([], pa.string())}), **window
    )
    _land(
        landing,
        "products",
        run_id,
        pa.table({**empty, "category": pa.array([], pa.string())}),
        **window,
    )
    _land(
        landing,
        "orders",
        run_id,
        pa.table(
            {
                "id": pa.array(order_ids, pa.int64()),
                "user_id": pa.array([1] * len(order_ids), pa.int64()),
                "status": pa.array([f"night{night}"] * len(order_ids), pa.string()),
                "created_at": pa.array([_day_of(o) for o in order_ids], TS),
                "updated_at": pa.array([stamp] * len(order_ids), TS),
            }
        ),
        **window,
    )
    _land(
        landing,
        "order_items",
        run_id,
        pa.table(
            {
                "id": pa.array(item_ids, pa.int64()),
                "order_id": pa.array([_order_of(i) for i in item_ids], pa.int64()),
                "product_id": pa.array([7] * len(item_ids), pa.int64()),
                "quantity": pa.array([night + 1] * len(item_ids), pa.int64()),
                "updated_at": pa.array([stamp] * len(item_ids), TS),
            }
        ),
        reconcile_deletes=True,
        **window,
    )
    _land(
        landing,
        "order_items__keys",
        run_id,
        pa.table({"id": pa.array(source_item_keys, pa.int64())}),
        mode="key_set",
    )


class Target:
    def __init__(self, kind: str, tmp_path: Path, pg_url: str | None = None) -> None:
        self.kind = kind
        if kind == "duckdb":
            self.warehouse: Any = DuckDBWarehouse(tmp_path / "wh" / "warehouse.duckdb")
            self.build = self.warehouse.begin_build("ranges")
        else:
            self.warehouse = PostgresWarehouse(pg_url, schemas=("raw", "ops"))
            self.build = self.warehouse.begin_build("ranges")

    def load(self, landing: Path, run_id: str, **options: Any) -> dict[str, Any]:
        return load_source_db(
            landing,
            SourceLoadPlan(run_id, TZ, warehouse=self.warehouse, build=self.build, **options),
        )

    def rows(self, sql: str, params: list | None = None) -> list[tuple]:
        with self.warehouse.transaction(self.build) as s:
            return s.fetchall(sql, params or [])


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.server)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "duckdb":
        return Target("duckdb", tmp_path)
    return Target("postgres", tmp_path, request.getfixturevalue("pg_database"))


def history(target: Target, landing: Path, missing: tuple[int, ...] = ()) -> list[int]:
    """Night 1: items 1..ITEMS (but `missing`) and their orders; returns the item ids."""
    item_ids = [i for i in range(1, ITEMS + 1) if i not in missing]
    land_night(
        landing,
        "n1",
        1,
        item_ids=item_ids,
        order_ids=sorted({_order_of(i) for i in item_ids}),
        source_item_keys=item_ids,
    )
    target.load(landing, "n1")
    return item_ids


def key_checks(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.key_check for r in caplog.records if hasattr(r, "key_check")]


def raw_item_ids(target: Target) -> set[int]:
    return {r[0] for r in target.rows("select id from {raw}.order_items")}


def test_deletes_in_old_history_are_removed(
    target: Target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    landing = tmp_path / "landing"
    items = history(target, landing)
    gone = [3, 4, 701]  # in the oldest ranges; 3 and 4 are all of order 2
    new = list(range(ITEMS + 1, ITEMS + 41))
    changed = [2500, 4999]
    caplog.set_level(logging.INFO, logger="warehouse.load")
    land_night(
        landing,
        "n2",
        2,
        item_ids=changed + new,
        order_ids=sorted({_order_of(i) for i in new}),
        source_item_keys=[i for i in items if i not in gone] + new,
    )
    result = target.load(landing, "n2")

    assert result["deleted"]["order_items"] == 3
    assert raw_item_ids(target) == (set(items) - set(gone)) | set(new)
    logged = target.rows(
        "select key from {ops}.deleted_rows where run_id = 'n2' and table_name = 'order_items'"
    )
    assert sorted(int(r[0]) for r in logged) == gone
    reasons = target.rows(
        "select business_date, reason from {ops}.restated_days where run_id = 'n2'"
    )
    assert (_day_of(2).date(), "item_deleted") in reasons
    assert (_day_of(_order_of(701)).date(), "item_deleted") in reasons
    # only the ranges holding a delete were compared key by key
    (check,) = key_checks(caplog)
    assert check["ranges"] >= ITEMS // RANGE_KEYS - 1
    assert check["ranges_compared"] == 2
    assert check["keys_compared"] <= 2 * check["range_width"] < check["source_keys"] / 3
    # the reload of the night changes nothing
    again = target.load(landing, "n2")
    assert again["deleted"]["order_items"] == 3
    assert raw_item_ids(target) == (set(items) - set(gone)) | set(new)


def test_a_night_without_deletes_compares_no_key(
    target: Target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    landing = tmp_path / "landing"
    items = history(target, landing)
    new = list(range(ITEMS + 1, ITEMS + 101))
    caplog.set_level(logging.INFO, logger="warehouse.load")
    land_night(
        landing,
        "n2",
        2,
        item_ids=[10, 2000, 4000] + new,  # old items changed, new ones added
        order_ids=sorted({_order_of(i) for i in new}) + [5],
        source_item_keys=items + new,
    )
    result = target.load(landing, "n2")

    assert result["deleted"]["order_items"] == 0
    (check,) = key_checks(caplog)
    assert check["source_keys"] == ITEMS + 100
    assert check["ranges_compared"] == 0
    assert check["keys_compared"] == 0
    assert target.rows("select quantity from {raw}.order_items where id = 2000") == [(3,)]
    assert raw_item_ids(target) == set(items) | set(new)


def test_deletes_hidden_behind_keys_the_warehouse_never_had_are_found(
    target: Target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The source lacks 10 and 30 but has 15 and 25, which the warehouse never loaded: the
    range's count and sum agree, its hash sum does not, so the range is compared."""
    landing = tmp_path / "landing"
    items = history(target, landing, missing=(15, 25))
    caplog.set_level(logging.INFO, logger="warehouse.load")
    source = sorted((set(items) - {10, 30}) | {15, 25})
    land_night(landing, "n2", 2, item_ids=[], order_ids=[], source_item_keys=source)
    result = target.load(landing, "n2")

    assert result["deleted"]["order_items"] == 2
    assert not raw_item_ids(target) & {10, 30}
    (check,) = key_checks(caplog)
    assert check["ranges_compared"] == 1


def test_a_partial_key_set_still_trips_the_mass_delete_guard(
    target: Target, tmp_path: Path
) -> None:
    landing = tmp_path / "landing"
    items = history(target, landing)
    land_night(landing, "n2", 2, item_ids=[], order_ids=[], source_item_keys=items[: ITEMS // 2])
    guard = MassDeleteGuard(DeleteLimit(max_share=0.2, min_rows=2))
    with pytest.raises(MassDeleteError, match="order_items"):
        target.load(landing, "n2", guard=guard)
    assert raw_item_ids(target) == set(items)  # nothing was loaded
    assert target.rows("select count(*) from {ops}.deleted_rows where run_id = 'n2'") == [(0,)]
