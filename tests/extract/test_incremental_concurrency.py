"""Nothing missed, nothing doubled: extracts run while transactions commit out of order.

Real PostgreSQL. Writer threads insert and update orders with
`updated_at = clock_timestamp()` and then hold the transaction open for a random 0-3 s
before COMMIT, so rows become visible out of `updated_at` order (the contract's
10-minute bound, scaled down: the test's overlap is 5 s, above every commit delay).
Meanwhile extract + load run in a loop; after the writers stop, one final extract +
load, and `raw.orders` must equal the source exactly.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import sqlalchemy as sa

from demo.schema import metadata, orders
from extract.db_extract import ExtractPlan, extract_tables
from extract.landing import run_dir
from extract.tables import TableConfig
from warehouse.load import SourceLoadPlan, load_source_db

OVERLAP = timedelta(seconds=5)
MAX_COMMIT_DELAY = 3.0  # < OVERLAP
WRITERS = 6
WRITE_SECONDS = 14
CONFIG = TableConfig(
    "orders",
    overlap=OVERLAP,
    required_columns=("id", "user_id", "status", "currency", "total", "created_at", "updated_at"),
)
STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled", "refunded")


def _writer(engine: sa.Engine, worker: int, stop: threading.Event, errors: list) -> None:
    """Insert new orders and update committed ones, then commit up to 3 s late.

    Each writer updates only its own rows: no lock waits, so a transaction's commit
    delay is its sleep (a lock wait would stretch it past the bound under test).
    """
    rng = random.Random(worker)
    next_id = worker * 1_000_000 + 1
    committed: list[int] = []
    try:
        while not stop.is_set():
            new_ids = []
            with engine.begin() as conn:
                for _ in range(rng.randint(1, 3)):
                    conn.execute(
                        sa.text(
                            "insert into orders (id, user_id, status, currency, total, "
                            "created_at, updated_at) values (:id, 1, 'pending', 'EUR', :total, "
                            "clock_timestamp(), clock_timestamp())"
                        ),
                        {"id": next_id, "total": Decimal(rng.randrange(100, 99_999)) / 100},
                    )
                    new_ids.append(next_id)
                    next_id += 1
                for key in rng.sample(committed, min(2, len(committed))):
                    conn.execute(
                        sa.text(
                            "update orders set status = :status, updated_at = clock_timestamp() "
                            "where id = :id"
                        ),
                        {"status": rng.choice(STATUSES), "id": key},
                    )
                time.sleep(rng.uniform(0, MAX_COMMIT_DELAY))  # commit late, out of order
            committed.extend(new_ids)
    except Exception as exc:  # surfaced by the test
        errors.append(exc)


def _cycle(url: str, landing: Path, warehouse: Path, run: int) -> dict:
    run_id = f"c{run:04d}"
    manifests = extract_tables(
        url,
        ExtractPlan(
            run_id=run_id, landing_root=landing, warehouse_path=warehouse, configs=[CONFIG]
        ),
    )
    load_source_db(
        landing, SourceLoadPlan(run_id, "UTC", warehouse_path=warehouse, tables=("orders",))
    )
    return manifests["orders"]


def _rescued_by_overlap(landing: Path, manifests: list[dict]) -> int:
    """Row versions first landed by a run although an earlier run's window covered them:
    committed after that run's snapshot, i.e. out of updated_at order."""
    seen: set[tuple] = set()
    rescued = 0
    previous_end = None
    for m in manifests:
        directory = run_dir(landing, "source_db", "orders", m["run_id"])
        table = pq.read_table(directory, columns=["id", "updated_at"])
        for key, ts in zip(
            table.column("id").to_pylist(), table.column("updated_at").to_pylist(), strict=True
        ):
            if (key, ts) in seen:
                continue
            seen.add((key, ts))
            if previous_end is not None and ts <= previous_end:
                rescued += 1
        previous_end = datetime.fromisoformat(m["window_end"])
    return rescued


def _state_source(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            (r.id, r.status, r.total, r.updated_at)
            for r in conn.execute(
                sa.select(orders.c.id, orders.c.status, orders.c.total, orders.c.updated_at)
            )
        ]


def test_concurrent_out_of_order_commits_are_never_missed_nor_doubled(
    pg_database: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(pg_database, pool_size=WRITERS + 2)
    metadata.create_all(engine, tables=[orders])
    with engine.begin() as conn:  # a few rows to update from the start
        conn.execute(
            sa.text(
                "insert into orders (id, user_id, status, currency, total, created_at, "
                "updated_at) select g, 1, 'paid', 'USD', 1.00, clock_timestamp(), "
                "clock_timestamp() from generate_series(1, 20) g"
            )
        )
    landing, warehouse = tmp_path / "landing", tmp_path / "warehouse.duckdb"
    stop = threading.Event()
    errors: list[Exception] = []
    threads = [
        threading.Thread(target=_writer, args=(engine, w, stop, errors), daemon=True)
        for w in range(1, WRITERS + 1)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + WRITE_SECONDS
    runs = 0
    landed = []
    try:
        while time.monotonic() < deadline:
            runs += 1
            landed.append(_cycle(pg_database, landing, warehouse, runs))
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    runs += 1
    landed.append(_cycle(pg_database, landing, warehouse, runs))

    want = _state_source(engine)
    engine.dispose()
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        got = con.execute("select id, status, total, updated_at from raw.orders").fetchall()
        late = con.execute(
            "select count(*) from ops.loaded_runs where table_name = 'orders'"
        ).fetchone()[0]
    finally:
        con.close()
    assert runs >= 8 and late == runs, (runs, late)
    assert len(want) > 80, "the writers wrote too little for the test to mean anything"
    assert len(got) == len({r[0] for r in got}), "duplicated keys in raw.orders"
    missing = {r[0] for r in want} - {r[0] for r in got}
    assert not missing, f"missed {len(missing)} rows: {sorted(missing)[:10]}"
    norm = sorted((i, s, t, u.timestamp()) for i, s, t, u in got)
    assert norm == sorted((i, s, t, u.timestamp()) for i, s, t, u in want), "stale versions"
    # incremental: the loop's runs landed windows, not the whole table each time
    assert min(m["rows"] for m in landed[1:]) < len(want)
    # the scenario happened: some versions became visible only after a run had passed them
    assert _rescued_by_overlap(landing, landed) > 0
