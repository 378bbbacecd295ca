"""`make migration-demo`: the whole move on the demo data, in about a minute.

1. Old source: the demo generator's SQLite database (docs/contract.md, "Sources").
2. New: a PostgreSQL database with the changed schema (migrate/new_schema.sql) on the
   server at NIGHTSHIFT_MIGRATION_PG_URL (default: local 127.0.0.1:5432; a throwaway
   server is started when none answers).
3. Phase 1: a small simulated application (threads) writes through the dual writer:
   new orders with items, status changes, customers moving region; every
   `--fail-every`-th write to the new database is made to fail, so the repair log fills.
   It also does shadow reads.
4. Phase 2, at the same time: the throttled backfill copies history.
5. The application stops; a verification shows what the failed writes left behind,
   and the phase 4 gate says no. The backfill replays the repair log, three clean
   verifications follow, and the gates of phases 3, 4 and 5 are decided and printed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import clock, settings
from core.settings import PROJECT_ROOT
from demo.generator import generate
from demo.servers import DEFAULT_PG_URL, postgres_server
from migrate.backfill import run_backfill
from migrate.checks import decide, record_check
from migrate.db import apply_new_schema, make_engine
from migrate.dual_write import DualWriter, pending_repairs
from migrate.mapping import load_mappings
from migrate.state import ensure_journal, ensure_ops, shadow_diffs
from migrate.verify import verify_table

log = logging.getLogger(__name__)
DEMO_DB = "nightshift_migration_demo"


class InjectedFailure(RuntimeError):
    """The demo's simulated outage of the new database."""


@contextlib.contextmanager
def pg_admin_url() -> Iterator[str]:
    """The PostgreSQL server to use: NIGHTSHIFT_MIGRATION_PG_URL, else a throwaway one."""
    url = settings.env("NIGHTSHIFT_MIGRATION_PG_URL", DEFAULT_PG_URL)
    os.environ["NIGHTSHIFT_TEST_PG_URL"] = url  # postgres_server() tries this one first
    with postgres_server() as found:
        yield found


def recreate_database(admin_url: str, name: str) -> str:
    """Drop and create the demo's new database; its URL."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def fail_every(engine: Engine, n: int) -> dict[str, int]:
    """Make every n-th write statement on `engine` fail (n=0: never)."""
    counter = {"writes": 0, "failed": 0}
    lock = threading.Lock()

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _maybe_fail(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        if n <= 0 or not statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            return
        with lock:
            counter["writes"] += 1
            if counter["writes"] % n:
                return
            counter["failed"] += 1
        raise InjectedFailure("injected: the new database is unreachable")

    return counter


@dataclass
class App:
    """A few threads of application traffic through the dual writer."""

    writer: DualWriter
    next_order: Iterator[int]
    next_item: Iterator[int]
    max_user: int
    stop: threading.Event = field(default_factory=threading.Event)
    counts: dict[str, int] = field(default_factory=lambda: {"requests": 0, "shadow_reads": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)
    id_lock: threading.Lock = field(default_factory=threading.Lock)
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    last_stamp: datetime | None = None

    def ids(self, n_items: int) -> tuple[int, list[int]]:
        with self.id_lock:
            return next(self.next_order), [next(self.next_item) for _ in range(n_items)]

    def _stamp(self) -> datetime:
        """The next `updated_at`, strictly after the last one (called under `write_lock`)."""
        now = clock.now().replace(tzinfo=None)  # the old source keeps naive UTC
        if self.last_stamp is not None and now <= self.last_stamp:
            now = self.last_stamp + timedelta(microseconds=1)
        self.last_stamp = now
        return now

    def run(self, seed: int) -> None:
        """Writes take `write_lock` from stamping `updated_at` to commit, as a database's
        row locks would: two threads updating one row otherwise commit the older stamp
        last in the old source, while the new side keeps the newer version (it never
        replaces a newer one), and the two differ for good."""
        rng = random.Random(seed)
        while not self.stop.is_set():
            action = rng.random()
            if action < 0.4:
                with self.write_lock:
                    self.new_order(rng, self._stamp())
            elif action < 0.7:
                order = rng.randrange(1, 1 + self.max_user * 5)
                with self.write_lock, self.writer.transaction() as tx:
                    tx.update("orders", order, {"status": "shipped", "updated_at": self._stamp()})
            elif action < 0.85:
                user = rng.randrange(1, self.max_user + 1)
                region = rng.choice(["north", "south", "east", "west", "  "])
                with self.write_lock, self.writer.transaction() as tx:
                    tx.update("users", user, {"region": region, "updated_at": self._stamp()})
            else:
                self.writer.shadow_read("orders", rng.randrange(1, 1 + self.max_user * 5))
                with self.lock:
                    self.counts["shadow_reads"] += 1
            with self.lock:
                self.counts["requests"] += 1
            time.sleep(0.01)

    def new_order(self, rng: random.Random, now: datetime) -> None:
        n_items = rng.randint(1, 3)
        order_id, item_ids = self.ids(n_items)
        prices = [Decimal(rng.randrange(100, 20_000)).scaleb(-2) for _ in item_ids]
        with self.writer.transaction() as tx:
            tx.insert(
                "orders",
                {
                    "id": order_id,
                    "user_id": rng.randrange(1, self.max_user + 1),
                    "status": "pending",
                    "currency": "USD",
                    "total": sum(prices),
                    "created_at": now,
                    "updated_at": now,
                },
            )
            for item_id, price in zip(item_ids, prices, strict=True):
                tx.insert(
                    "order_items",
                    {
                        "id": item_id,
                        "order_id": order_id,
                        "product_id": rng.randrange(1, 50),
                        "quantity": 1,
                        "unit_price": price,
                        "updated_at": now,
                    },
                )


def _max_id(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {table}").scalar_one()


def _shadow_diffs(old: Engine) -> int:
    with old.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(shadow_diffs)).scalar_one()


def _verify_all(old: Engine, new: Engine, mappings: dict, run_id: str) -> bool:
    clean = True
    for mapping in mappings.values():
        result = verify_table(old, new, mapping)
        record_check(new, run_id, 3, result)
        print(f"  {result.summary()}")
        if not result.clean:
            clean = False
            print(f"    e.g. {result.sample_keys(3)}")
    return clean


def run_demo(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    old_path = data_dir / "old_source.db"

    print(f"1. old source: {old_path} ({args.days} days x {args.orders_per_day} orders)")
    generate(
        f"sqlite:///{old_path}",
        days=args.days,
        orders_per_day=args.orders_per_day,
        if_exists="replace",
    )
    mappings = load_mappings()
    with pg_admin_url() as admin_url:
        new_url = recreate_database(admin_url, args.database)
        old, new = make_engine(f"sqlite:///{old_path}"), make_engine(new_url)
        with old.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # app writes while backfill reads
        print(f"2. new PostgreSQL: {sa.make_url(new_url).render_as_string(hide_password=True)}")
        apply_new_schema(new)
        ensure_ops(new)
        ensure_journal(old)
        tables = list(mappings.values())
        print(f"   {decide(old, new, 1, tables, 'demo').message()}")

        app_new = make_engine(new_url)  # the application's own pool, with the fault
        faults = fail_every(app_new, args.fail_every)
        app = App(
            DualWriter(old, app_new, mappings),
            itertools.count(_max_id(old, "orders") + 1),
            itertools.count(_max_id(old, "order_items") + 1),
            _max_id(old, "users"),
        )
        threads = [threading.Thread(target=app.run, args=(i,)) for i in range(args.app_threads)]
        print(f"3. application: {args.app_threads} threads writing through the dual writer")
        for t in threads:
            t.start()
        print(f"   {decide(old, new, 2, tables, 'demo').message()}")
        print(f"4. backfill at <= {args.rows_per_second:,} rows/s while the application runs")
        started = time.monotonic()
        run_backfill(
            old, new, mappings, tables, batch_size=1000, rows_per_second=args.rows_per_second
        )
        # keep the traffic going a little after the backfill: its failed writes stay queued
        time.sleep(max(3.0, args.app_seconds - (time.monotonic() - started)))
        app.stop.set()
        for t in threads:
            t.join()
        pending = pending_repairs(old)
        print(
            f"   application: {app.counts['requests']} requests, all answered; "
            f"{faults['failed']} writes to new failed (injected) -> {pending} repair-log entries; "
            f"{app.counts['shadow_reads']} shadow reads, {_shadow_diffs(old)} differed "
            "(rows not copied yet, or failed writes)"
        )
        print("5. verify before the repair log is replayed:")
        _verify_all(old, new, mappings, "demo-before-replay")
        print(f"   {decide(old, new, 4, tables, 'demo', required_clean_runs=3).message()}")
        replayed, _ = run_backfill(old, new, mappings, tables, progress_bar=False)
        print(f"6. backfill again: {replayed} repair-log entries replayed; verify 3 times:")
        clean = all([_verify_all(old, new, mappings, f"demo-{i}") for i in (1, 2, 3)])
        verdicts = [decide(old, new, p, tables, "demo", required_clean_runs=3) for p in (3, 4, 5)]
        for v in verdicts:
            print(f"   {v.message()}")
        ok = clean and all(v.allowed for v in verdicts)
        print(f"VERDICT: {'old and new agree; cutover allowed' if ok else 'NOT ready'}")
        old.dispose()
        new.dispose()
        app_new.dispose()
    return 0 if ok else 1


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m demo.migration", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--data-dir",
        default=str(PROJECT_ROOT / "data" / "migration-demo"),
        help="the demo's old (SQLite) source and files",
    )
    parser.add_argument("--database", default=DEMO_DB, help="new database (recreated)")
    parser.add_argument("--days", type=int, default=30, help="days of demo history (default 30)")
    parser.add_argument(
        "--orders-per-day", type=int, default=150, help="orders per day (default 150)"
    )
    parser.add_argument(
        "--app-threads", type=int, default=3, help="application writers during the move"
    )
    parser.add_argument(
        "--app-seconds", type=float, default=10.0, help="how long the writers run (default 10)"
    )
    parser.add_argument(
        "--rows-per-second", type=int, default=5_000, help="backfill throttle (default 5000)"
    )
    parser.add_argument("--fail-every", type=int, default=10, help="n-th write to new fails")
    args = parser.parse_args(argv)
    # The demo prints its own story; the library's per-write warnings would drown it.
    logging.basicConfig(level=logging.CRITICAL, format="%(levelname)s %(name)s: %(message)s")
    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
