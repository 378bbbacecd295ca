"""warehouse.load on both backends: the same landed runs loaded into a DuckDB file and into
a PostgreSQL build (a fresh database) leave the same `raw.*` and `ops.*` tables, row for
row, after every step: first load, incremental runs with late rows and updates, hard
deletes through key sets, the mass-delete guard stopping before the merge (and the
operator's override), extra and odd-named columns, a numeric widening, accepted schema
drift, a reload, the payments source with revised FX rates, and a sharded run.

Load-time timestamps (`_loaded_at`, `deleted_at`, `decided_at`, `loaded_at`) differ by
nature and are left out of the comparison; everything else, column types included,
must match.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from extract.landing import LandingOptions, LandingTarget, write_landing_table
from tests.warehouse.test_load import (
    TS,
    TZ,
    items,
    keys,
    land,
    land_run,
    land_shard,
    orders,
    products,
    ts,
    users,
    write_record,
)
from warehouse.backends.duckdb import DuckDBWarehouse
from warehouse.backends.postgres import PostgresWarehouse
from warehouse.guards import DeleteLimit, MassDeleteError, MassDeleteGuard
from warehouse.load import SourceLoadPlan, load_payments_api, load_source_db, load_source_db_sharded

RAW_TABLES = ("users", "products", "orders", "order_items", "payments", "fx_rates")
OPS_TABLES = ("loaded_runs", "deleted_rows", "restated_days", "guard_overrides")
VOLATILE = {"_loaded_at", "deleted_at", "decided_at", "loaded_at"}
JSON_COLUMNS = {"manifest", "details"}
STRICT = MassDeleteGuard(DeleteLimit(max_share=0.2, min_rows=2))


class Target:
    """One backend: the DuckDB file through the loader's path API (as the nightly calls
    it), or a PostgreSQL build through `warehouse=` / `build=`."""

    def __init__(self, kind: str, tmp_path: Path, pg_url: str | None = None) -> None:
        self.kind = kind
        if kind == "duckdb":
            self.path: Path | None = tmp_path / "wh" / "warehouse.duckdb"
            self.warehouse: Any = DuckDBWarehouse(self.path)
            self.build = None
        else:
            assert pg_url is not None
            self.path = None
            self.warehouse = PostgresWarehouse(pg_url, schemas=("raw", "ops"))
            self.build = self.warehouse.begin_build("load-test")

    def _where(self) -> dict[str, Any]:
        if self.kind == "duckdb":
            return {}
        return {"warehouse": self.warehouse, "build": self.build}

    def source_db(self, landing: Path, run_id: str, **options: Any) -> dict[str, Any]:
        return load_source_db(
            landing,
            SourceLoadPlan(run_id, TZ, warehouse_path=self.path, **options, **self._where()),
        )

    def sharded(self, landing: Path, run_id: str, **options: Any) -> dict[str, Any]:
        return load_source_db_sharded(
            landing,
            SourceLoadPlan(run_id, TZ, warehouse_path=self.path, **options, **self._where()),
        )

    def payments(
        self, landing: Path, run_id: str, tables: tuple[str, ...] = ("payments", "fx_rates")
    ) -> dict[str, Any]:
        return load_payments_api(self.path, landing, run_id, tables, **self._where())

    def snapshot(self) -> dict[str, Any]:
        """Every raw/ops table: column names and Arrow types, and its rows (sorted,
        load-time columns left out, JSON parsed, values as comparable text)."""
        state: dict[str, Any] = {}
        with self.warehouse.transaction(self.build) as s:
            for schema, tables in (("raw", RAW_TABLES), ("ops", OPS_TABLES)):
                for table in tables:
                    if not s.exists(schema, table):
                        continue
                    relation = s.table(schema, table)
                    columns = s.table_columns(relation)
                    keep = [c for c in columns if c not in VOLATILE]
                    select = ", ".join('"' + c.replace('"', '""') + '"' for c in keep)
                    rows = [
                        tuple(_value(c, v) for c, v in zip(keep, row, strict=True))
                        for row in s.fetchall(f"select {select} from {relation}")
                    ]
                    state[f"{schema}.{table}"] = {
                        "columns": [(c, _type(columns[c])) for c in keep],
                        "rows": sorted(rows, key=repr),
                    }
        return state


def _type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):  # the zone's spelling (UTC, Etc/UTC) is not a difference
        return f"timestamp[{t.unit}, {'tz' if t.tz else 'naive'}]"
    if t == pa.large_string():
        return "string"
    return str(t)


def _value(column: str, value: Any) -> Any:
    if column in JSON_COLUMNS and value is not None:
        parsed = json.loads(value) if isinstance(value, str) else value
        return json.dumps(parsed, sort_keys=True, default=str)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, dt.date | Decimal):
        return str(value)
    return value


@pytest.fixture
def targets(tmp_path: Path, pg_database: str) -> list[Target]:
    return [Target("duckdb", tmp_path / "duck"), Target("postgres", tmp_path / "pg", pg_database)]


def _same(targets: list[Target]) -> dict[str, Any]:
    duck, pg = (t.snapshot() for t in targets)
    assert list(duck) == list(pg)
    for name in duck:
        assert pg[name]["columns"] == duck[name]["columns"], name
        assert pg[name]["rows"] == duck[name]["rows"], name
    return duck


def _both(targets: list[Target], call) -> dict[str, Any]:
    results = [call(t) for t in targets]
    assert results[1] == results[0]
    return results[0]


def test_source_db_runs_leave_the_same_tables(tmp_path: Path, targets: list[Target]) -> None:
    landing = tmp_path / "landing"
    land_run(
        landing,
        "r1",
        ts(20),
        u=[(1, "EU", ts(1)), (2, "US", ts(1))],
        p=[(10, "books", ts(1)), (11, "toys", ts(1))],
        o=[
            (100, 1, "paid", "10.00", ts(5), ts(5)),
            (101, 2, "paid", "20.00", ts(6), ts(6)),
            (102, 2, "paid", "30.00", ts(7), ts(7)),
            (103, 1, "paid", "40.00", ts(8), ts(8)),
        ],
        i=[(1000 + n, 100 + n % 4, 10 + n % 2, ts(5)) for n in range(10)],
        item_keys=[1000 + n for n in range(10)],
    )
    # first load
    first = _both(targets, lambda t: t.source_db(landing, "r1"))
    assert first["raw_rows"] == {"users": 2, "products": 2, "orders": 4, "order_items": 10}
    assert first["restated_days"] == ["2024-01-05", "2024-01-06", "2024-01-07", "2024-01-08"]
    state = _same(targets)
    assert dict(state["raw.orders"]["columns"])["total"] == "decimal128(12, 2)"

    # incremental: an update, an older version in the same delta, a late order, an
    # overlap re-read, a region move, a hard delete, a new column
    land_run(
        landing,
        "r2",
        ts(21),
        u=[(2, "APAC", ts(9))],
        p=[(11, "toys", ts(1))],
        o=[
            (100, 1, "paid", "10.00", ts(5), ts(5)),
            (103, 1, "cancelled", "40.00", ts(8), ts(9)),
            (103, 1, "paid", "40.00", ts(8), ts(8, 13)),
            (104, 1, "paid", "5.00", ts(3), ts(9)),
            (102, 2, "pending", "30.00", ts(7), ts(6)),  # older than raw's: loses
        ],
        i=[(1010, 104, 10, ts(9))],
        item_keys=[1000 + n for n in range(11) if n != 1],
        coupon=True,
    )
    second = _both(targets, lambda t: t.source_db(landing, "r2"))
    assert second["deleted"]["order_items"] == 1
    assert second["restated_days"] == ["2024-01-03", "2024-01-06", "2024-01-07", "2024-01-08"]
    state = _same(targets)
    assert len(state["ops.deleted_rows"]["rows"]) == 1
    statuses = {r[0]: r[2] for r in state["raw.orders"]["rows"]}
    assert statuses == {100: "paid", 101: "paid", 102: "paid", 103: "cancelled", 104: "paid"}

    # odd-named extra columns, a numeric widening, accepted drift; loaded twice
    extra = {"window_end": ts(22).isoformat()}
    wide = orders([(100, 1, "paid", "10.00", ts(5), ts(21))], coupon=True)
    wide = wide.set_column(4, "total", pa.array([Decimal("123456789012.34")], pa.decimal128(14, 2)))
    for name in ("order-ref", "Order Ref", 'say "hi"', "UPPER"):
        wide = wide.append_column(name, pa.array([f"v-{name}"], pa.string()))
    land(landing, "source_db", "orders", "r3", wide, **extra)
    land(landing, "source_db", "users", "r3", users([(3, "EU", ts(21))]), **extra)
    cats = products([]).set_column(1, "category", pa.array([], pa.int64()))
    write_landing_table(
        cats,
        schema=cats.schema,
        target=LandingTarget(
            landing_root=landing, source="source_db", table_name="products", run_id="r3"
        ),
        options=LandingOptions(
            cursor_column="updated_at",
            extra_manifest={
                "mode": "incremental",
                "key": "id",
                "cursor_key": "updated_at",
                **extra,
            },
            accept_drift=["products.category"],
        ),
    )
    land(landing, "source_db", "order_items", "r3", items([]), reconcile_deletes=True, **extra)
    land(
        landing,
        "source_db",
        "order_items__keys",
        "r3",
        keys([1000 + n for n in range(11) if n != 1]),
        mode="key_set",
    )
    third = _both(targets, lambda t: t.source_db(landing, "r3"))
    state = _same(targets)
    assert _both(targets, lambda t: t.source_db(landing, "r3")) == third  # a reload
    assert _same(targets) == state
    columns = dict(state["raw.orders"]["columns"])
    assert columns["total"] == "decimal128(14, 2)"
    assert columns['say "hi"'] == "string" and columns["order-ref"] == "string"
    assert [r[:3] for r in state["ops.guard_overrides"]["rows"]] == [
        ("r3", "schema_drift", "products")
    ]

    # the guard: a key set missing most items stops the load before the merge
    extra = {"window_end": ts(23).isoformat()}
    land(landing, "source_db", "users", "r4", users([(1, "US", ts(22))]), **extra)
    land(landing, "source_db", "order_items", "r4", items([]), reconcile_deletes=True, **extra)
    land(landing, "source_db", "order_items__keys", "r4", keys([1000, 1002]), mode="key_set")
    r4 = {"tables": ("users", "order_items"), "guard": STRICT}
    for target in targets:
        with pytest.raises(MassDeleteError, match=r"raw.order_items: this run would delete 8"):
            target.source_db(landing, "r4", **r4)
    assert _same(targets) == state  # nothing was loaded
    # the operator allows it: the deletes happen and the override is recorded
    fourth = _both(targets, lambda t: t.source_db(landing, "r4", **r4, allow_mass_delete=True))
    assert fourth["deleted"]["order_items"] == 8
    state = _same(targets)
    assert [r[1] for r in state["ops.guard_overrides"]["rows"]] == ["schema_drift", "mass_delete"]
    assert len(state["ops.loaded_runs"]["rows"]) == 14


def test_payments_and_revised_fx_rates_leave_the_same_tables(
    tmp_path: Path, targets: list[Target]
) -> None:
    landing = tmp_path / "landing"

    def payments(rows):
        return pa.table(
            {
                "id": pa.array([r[0] for r in rows], pa.string()),
                "order_id": pa.array([1] * len(rows), pa.int64()),
                "amount": pa.array([Decimal("1.00")] * len(rows), pa.decimal128(18, 2)),
                "status": pa.array([r[1] for r in rows], pa.string()),
                "updated_at": pa.array([r[2] for r in rows], TS),
            }
        )

    def fx(rows):
        return pa.table(
            {
                "rate_date": pa.array([r[0] for r in rows], pa.date32()),
                "base": pa.array(["USD"] * len(rows), pa.string()),
                "currency": pa.array([r[1] for r in rows], pa.string()),
                "rate": pa.array([Decimal(r[2]) for r in rows], pa.decimal128(38, 18)),
            }
        )

    d1, d2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    land(landing, "payments_api", "payments", "r1", payments([("a", "succeeded", ts(1))]))
    land(landing, "payments_api", "fx_rates", "r1", fx([(d1, "EUR", "0.9"), (d1, "USD", "1")]))
    _both(targets, lambda t: t.payments(landing, "r1"))
    _same(targets)
    land(
        landing,
        "payments_api",
        "payments",
        "r2",
        payments([("a", "refunded", ts(3)), ("a", "succeeded", ts(1)), ("b", "failed", ts(2))]),
    )
    land(landing, "payments_api", "fx_rates", "r2", fx([(d1, "EUR", "0.95"), (d2, "EUR", "0.8")]))
    result = _both(targets, lambda t: t.payments(landing, "r2"))
    assert result["raw_rows"] == {"payments": 2, "fx_rates": 3}
    state = _same(targets)
    assert state["ops.restated_days"]["rows"] == [("r2", "2024-01-01", "fx rate revised")]


def test_a_sharded_run_leaves_the_same_tables(tmp_path: Path, targets: list[Target]) -> None:
    landing = tmp_path / "landing"
    a = land_shard(
        landing,
        "d1",
        "s0",
        "x1",
        ts(20),
        u=[(1, "EU", ts(1))],
        p=[(10, "books", ts(1))],
        o=[(100, 1, "paid", "10.00", ts(5), ts(5)), (101, 1, "paid", "11.00", ts(5), ts(6))],
        i=[(1000, 100, 10, ts(5))],
        item_keys=[1000],
    )
    b = land_shard(
        landing,
        "d1",
        "s1",
        "x1",
        ts(20),
        u=[(2, "US", ts(1))],
        p=[(11, "toys", ts(1))],
        # a row copied to the new shard by a reshard, newer there: the newer one wins
        o=[(101, 1, "shipped", "11.00", ts(5), ts(7)), (102, 2, "paid", "12.00", ts(6), ts(6))],
        i=[(1001, 102, 11, ts(6))],
        item_keys=[1001],
    )
    write_record(landing, "d1", "x1", [a, b])
    result = _both(targets, lambda t: t.sharded(landing, "d1"))
    assert result["raw_rows"]["orders"] == 3 and result["shards"] == ["s0", "s1"]
    state = _same(targets)
    assert {r[0]: r[2] for r in state["raw.orders"]["rows"]}[101] == "shipped"


def test_columns_are_added_and_widened_alike(tmp_path: Path, targets: list[Target]) -> None:
    landing = tmp_path / "landing"
    land(
        landing,
        "payments_api",
        "fx_rates",
        "r1",
        pa.table(
            {
                "rate_date": [dt.date(2024, 1, 1)],
                "currency": ["EUR"],
                "rate": pa.array([Decimal("0.9")], pa.decimal128(12, 4)),
            }
        ),
    )
    _both(targets, lambda t: t.payments(landing, "r1", ("fx_rates",)))
    for t in targets:
        t.warehouse.add_column(t.build, "raw", "fx_rates", "Source Note", pa.string())
        t.warehouse.add_column(t.build, "raw", "fx_rates", "n", pa.int32())
        t.warehouse.widen_column(t.build, "raw", "fx_rates", "rate", pa.decimal128(16, 6))
        t.warehouse.widen_column(t.build, "raw", "fx_rates", "n", pa.int64())
        columns = t.warehouse.table_columns(t.build, "raw", "fx_rates")
        assert columns["rate"] == pa.decimal128(16, 6) and columns["n"] == pa.int64()
        assert columns["Source Note"] == pa.string()
        assert t.warehouse.table_columns(t.build, "raw", "missing") == {}
    state = _same(targets)
    assert state["raw.fx_rates"]["rows"][0][:3] == ("2024-01-01", "EUR", "0.900000")


@pytest.fixture(params=["duckdb", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "duckdb":
        return Target("duckdb", tmp_path / "duck")
    return Target("postgres", tmp_path / "pg", request.getfixturevalue("pg_database"))


def test_each_backend_merges_deletes_and_restates(tmp_path: Path, target: Target) -> None:
    """test_load's two runs, on each backend by itself, against the expected rows."""
    landing = tmp_path / "landing"
    land_run(
        landing,
        "r1",
        ts(20),
        u=[(1, "EU", ts(1)), (2, "US", ts(1))],
        p=[(10, "books", ts(1)), (11, "toys", ts(1))],
        o=[
            (100, 1, "paid", "10.00", ts(5), ts(5)),
            (101, 2, "paid", "20.00", ts(6), ts(6)),
            (102, 2, "paid", "30.00", ts(7), ts(7)),
            (103, 1, "paid", "40.00", ts(8), ts(8)),
        ],
        i=[(1000, 100, 10, ts(5)), (1001, 101, 11, ts(6)), (1002, 103, 10, ts(8))],
        item_keys=[1000, 1001, 1002],
    )
    target.source_db(landing, "r1")
    land_run(
        landing,
        "r2",
        ts(21),
        u=[(2, "APAC", ts(9))],
        p=[(11, "toys", ts(1))],
        o=[
            (100, 1, "paid", "10.00", ts(5), ts(5)),
            (103, 1, "cancelled", "40.00", ts(8), ts(9)),
            (103, 1, "paid", "40.00", ts(8), ts(8, 13)),
            (104, 1, "paid", "5.00", ts(3), ts(9)),
        ],
        i=[(1003, 104, 10, ts(9))],
        item_keys=[1000, 1002, 1003],
        coupon=True,
    )
    result = target.source_db(landing, "r2")
    assert result["deleted"]["order_items"] == 1
    assert result["restated_days"] == ["2024-01-03", "2024-01-06", "2024-01-07", "2024-01-08"]
    with target.warehouse.transaction(target.build) as s:
        assert s.fetchall(
            f"select id, status, coupon, _run_id from {s.table('raw', 'orders')} order by id"
        ) == [
            (100, "paid", "X", "r2"),
            (101, "paid", None, "r1"),
            (102, "paid", None, "r1"),
            (103, "cancelled", "X", "r2"),
            (104, "paid", "X", "r2"),
        ]
        assert s.fetchall("select table_name, key from {ops}.deleted_rows") == [
            ("order_items", "1001")
        ]
        assert s.fetchall(
            "select business_date, reason from {ops}.restated_days where run_id = ? order by 1, 2",
            ["r2"],
        ) == [
            (dt.date(2024, 1, 3), "items_changed"),
            (dt.date(2024, 1, 3), "order_new"),
            (dt.date(2024, 1, 6), "item_deleted"),
            (dt.date(2024, 1, 6), "user_region"),
            (dt.date(2024, 1, 7), "user_region"),
            (dt.date(2024, 1, 8), "order_changed"),
        ]
    again = target.source_db(landing, "r2")  # a reload changes nothing
    assert {k: v for k, v in again.items() if k != "rows"} == {
        k: v for k, v in result.items() if k != "rows"
    }
