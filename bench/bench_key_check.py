"""The hard-delete check of one incremental night: every key landed (old) vs bucket summaries (new).

Usage: python bench/bench_key_check.py [--sizes 200000,1000000] [--items-per-order 2.6]

For each size N: a PostgreSQL source `order_items` of N x --items-per-order rows (database
`nightshift_keycheck_<N>`, made here and dropped after; admin URL from
NIGHTSHIFT_BENCH_PG_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/postgres).
Night 1 (not timed) is extracted (`extract.db_extract.extract_tables`, the production
path) and loaded (`warehouse.load.load_source_db`, DuckDB) twice, into two landings and
two warehouses: the old design (every key landed: the extract's summaries switched off,
the loader's key-range comparison of the whole key set) and the new one (the source's
bucket summaries, the keys of the changed buckets only). Then one night's change at the
source: 8,000 orders' worth of new items, 300 item updates, 200 item hard deletes in the
oldest tenth of the history; night 2 is extracted and loaded in both designs. Prints per
size and design

BENCH key_check orders=N design=old|new extract_keys_s=<the extract's key check:
summaries, keys, landing> load_keys_s=<the load's key check> keys_s=<both>
keys_landed=<keys in order_items__keys> extract_s=<whole extract> load_s=<whole load>
deleted=<order_items rows deleted>

and per design the ratio of the largest size to the smallest. Seconds are one run each on
a possibly shared machine: the old/new ratio within one size is the figure to read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import sqlalchemy as sa  # noqa: E402

import extract.db_extract as db_extract  # noqa: E402
import warehouse.load as load  # noqa: E402
from extract.db_extract import ExtractPlan, extract_tables  # noqa: E402
from extract.tables import TableConfig  # noqa: E402

DEFAULT_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
NIGHT_ORDERS = 8_000
UPDATES = 300
DELETES = 200
ITEMS = TableConfig(name="order_items", reconcile_deletes=True)


@contextmanager
def _database(admin: str, name: str) -> Iterator[str]:
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}"'))
            conn.execute(sa.text(f'create database "{name}"'))
        yield sa.make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        engine.dispose()


def _run(url: str, *statements: str, **params: Any) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement), params)
    finally:
        engine.dispose()


def _fill(url: str, items: int) -> None:
    """`order_items` 1..items, stamped over a year before now (all before the night)."""
    _run(
        url,
        "create table order_items (id bigint primary key, order_id bigint not null, "
        "product_id bigint not null, quantity integer not null, unit_price numeric(12, 2) "
        "not null, updated_at timestamp not null)",
        "insert into order_items select g, g / 3 + 1, g % 1000, 1 + g % 5, 9.99, "
        "(now() at time zone 'utc') - interval '400 days' "
        "+ (g * (interval '365 days' / cast(:items as integer))) "
        "from generate_series(1, cast(:items as bigint)) g",
        "create index on order_items (updated_at)",
        "analyze order_items",
        items=items,
    )


def _change(url: str, items: int, per_order: float) -> None:
    """One night: new items at the tail, updates and hard deletes in old history."""
    new = int(NIGHT_ORDERS * per_order)
    _run(
        url,
        "insert into order_items select g, g / 3 + 1, g % 1000, 1, 9.99, "
        "now() at time zone 'utc' from generate_series(cast(:lo as bigint), "
        "cast(:hi as bigint)) g",
        "update order_items set quantity = quantity + 1, updated_at = now() at time zone 'utc' "
        "where id in (select (g * 7919) % cast(:items as bigint) + 1 "
        "from generate_series(1, cast(:updates as integer)) g)",
        "delete from order_items where id in (select (g * 104729) % cast(:tenth as bigint) + 1 "
        "from generate_series(1, cast(:deletes as integer)) g)",
        lo=items + 1,
        hi=items + new,
        items=items,
        updates=UPDATES,
        tenth=max(1, items // 10),
        deletes=DELETES,
    )


class _Timer:
    """Seconds spent in the wrapped functions (the key check of one step)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


@contextmanager
def _design(name: str) -> Iterator[tuple[_Timer, _Timer]]:
    """The design's switches, and timers around its extract and load key checks."""
    saved = {
        (db_extract, "_land_keys"): db_extract._land_keys,
        (db_extract, "_summarised"): db_extract._summarised,
        (load, "_find_gone_by_ranges"): load._find_gone_by_ranges,
        (load, "_find_gone_by_summaries"): load._find_gone_by_summaries,
    }
    extract_t, load_t = _Timer(), _Timer()
    if name == "old":
        db_extract._summarised = lambda *_: False  # every key, as the extract landed it
    db_extract._land_keys = extract_t.wrap(db_extract._land_keys)
    load._find_gone_by_ranges = load_t.wrap(load._find_gone_by_ranges)
    load._find_gone_by_summaries = load_t.wrap(load._find_gone_by_summaries)
    try:
        yield extract_t, load_t
    finally:
        for (module, attr), fn in saved.items():
            setattr(module, attr, fn)


def _night(
    url: str, landing: Path, warehouse: Path, run_id: str
) -> tuple[dict, dict, float, float]:
    start = time.perf_counter()
    manifests = extract_tables(
        url,
        ExtractPlan(run_id=run_id, landing_root=landing, warehouse_path=warehouse, configs=[ITEMS]),
    )
    extracted = time.perf_counter()
    result = load.load_source_db(
        landing,
        load.SourceLoadPlan(run_id, "UTC", warehouse_path=warehouse, tables=("order_items",)),
    )
    return manifests, result, extracted - start, time.perf_counter() - extracted


def bench_size(admin: str, orders: int, per_order: float, work: Path) -> dict[str, dict]:
    items = int(orders * per_order)
    out: dict[str, dict] = {}
    with _database(admin, f"nightshift_keycheck_{orders}") as url:
        _fill(url, items)
        for design in ("old", "new"):
            with _design(design):
                _night(url, work / design / "landing", work / design / "wh.duckdb", "r1")
        _change(url, items, per_order)
        for design in ("old", "new"):
            with _design(design) as (extract_t, load_t):
                manifests, result, extract_s, load_s = _night(
                    url, work / design / "landing", work / design / "wh.duckdb", "r2"
                )
            out[design] = {
                "extract_keys_s": extract_t.seconds,
                "load_keys_s": load_t.seconds,
                "keys_s": extract_t.seconds + load_t.seconds,
                "keys_landed": manifests["order_items__keys"]["rows"],
                "extract_s": extract_s,
                "load_s": load_s,
                "deleted": result["deleted"]["order_items"],
            }
            print(
                f"BENCH key_check orders={orders} design={design} "
                + " ".join(
                    f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in out[design].items()
                ),
                flush=True,
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200000,1000000")
    parser.add_argument("--items-per-order", type=float, default=2.6)
    args = parser.parse_args()
    admin = os.environ.get("NIGHTSHIFT_BENCH_PG_URL", DEFAULT_ADMIN)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"# load average {os.getloadavg()[0]:.2f}", flush=True)
    results = {}
    work = Path(tempfile.mkdtemp(prefix="bench-key-check-"))
    try:
        for orders in sizes:
            results[orders] = bench_size(admin, orders, args.items_per_order, work / str(orders))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        for design in ("old", "new"):
            a, b = results[lo][design]["keys_s"], results[hi][design]["keys_s"]
            print(f"BENCH key_check design={design} ratio_{hi}_{lo}={b / max(a, 1e-9):.2f}")
    for orders in sizes:
        old, new = results[orders]["old"], results[orders]["new"]
        print(
            f"BENCH key_check orders={orders} old_over_new={old['keys_s'] / max(new['keys_s'], 1e-9):.1f} "
            f"keys_landed_old={old['keys_landed']} keys_landed_new={new['keys_landed']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
