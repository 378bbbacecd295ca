"""The PostgreSQL warehouse under faults, end to end: `nightly_sales` through real Airflow
(`airflow dags test`) against a real PostgreSQL source and a PostgreSQL warehouse
(`AIRFLOW_CONN_WAREHOUSE`: builds in private `<schema>__build_<token>` schemas, publish by
renaming every schema in one transaction, the run lease in `nightshift_control.lease`).

One source, API and warehouse are shared by the cases (module fixture; one good day is
published first); each case leaves the source fixed again:

- bad input that reaches the warehouse side: a landed-gate failure (duplicate and NULL
  keys) and an emptied source table (the mass-delete guard) stop the run with the
  published tables unchanged; the failed gate is in the published `ops.quality_results`;
  the failed run's build schemas are private and the next attempt of the day drops them;
- a run SIGKILLed inside the publish transaction (after the schema renames, before the
  commit) leaves the published tables exactly as they were; the next run of the day
  takes the expired lease over, drops the killed run's build schemas and publishes what
  the oracle computes;
- an analyst's reader looping queries while a night publishes never finds a table
  missing, never sees the two analytics tables disagree, never sees a day disappear.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from core import settings
from tests.e2e.harness import (
    REPORT_TZ,
    running_source,
    snapshot,
    source_uri,
)
from tests.e2e.test_bad_input import DAY, NOT_NULL, RUN_ID, World, _failed
from tests.servers import fresh_database
from warehouse.backends.base import PUBLISHED_SCHEMAS
from warehouse.backends.postgres import PostgresWarehouse, libpq_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

LEASE_TTL_MINUTES = "0.1"  # 6 s: a killed run's lease expires quickly
PAUSE_ENV = "NIGHTSHIFT_TEST_PAUSE_IN_PUBLISH"

# Loaded by every Python process of a run whose PYTHONPATH starts with its folder: when
# PAUSE_ENV names a file, the publish transaction stops right after its schema renames
# (at the generation bump, before the commit), writes that file and sleeps: the test
# SIGKILLs the run there.
SITECUSTOMIZE = textwrap.dedent(
    f"""
    import os

    if os.environ.get({PAUSE_ENV!r}):
        import time
        from pathlib import Path

        import psycopg

        _execute = psycopg.Connection.execute

        def execute(self, query, *args, **kwargs):
            if isinstance(query, str) and "publish_state set generation" in query:
                Path(os.environ[{PAUSE_ENV!r}]).write_text(str(os.getpid()))
                time.sleep(600)
            return _execute(self, query, *args, **kwargs)

        psycopg.Connection.execute = execute
    """
)


@dataclass
class PgWorld(World):
    """The bad-input world, published to a PostgreSQL warehouse."""

    warehouse_url: str = ""

    @property
    def warehouse(self) -> PostgresWarehouse:  # type: ignore[override]
        return PostgresWarehouse(self.warehouse_url)

    def quality(self, suite: str, run_id: str = RUN_ID) -> dict[tuple[str, str | None], Any]:
        """The published `ops.quality_results`: (expectation, column) -> row."""
        rows = self.warehouse.read_arrow(
            "select expectation, column_name, severity, success, observed_value, details "
            "from {ops}.quality_results where run_id = ? and suite = ?",
            [run_id, suite],
        ).to_pylist()
        return {
            (r["expectation"], r["column_name"]): (
                r["severity"],
                r["success"],
                r["observed_value"],
                r["details"],
            )
            for r in rows
        }

    def wh_sql(self, sql: str, params: list | None = None) -> list[tuple]:
        """Rows of a query on the warehouse database itself (catalog, control schema)."""
        with psycopg.connect(libpq_url(self.warehouse_url), autocommit=True) as con:
            return con.execute(sql, params).fetchall()

    def schemas(self) -> set[str]:
        return {
            r[0]
            for r in self.wh_sql(
                "select nspname from pg_namespace where nspname not like 'pg\\_%' "
                "and nspname <> 'information_schema'"
            )
        }

    def builds(self) -> list[tuple[str, str]]:
        """(token, run id) of every build recorded in the control schema."""
        return self.wh_sql("select token, run_id from nightshift_control.builds order by 1")

    def generation(self) -> int:
        return self.warehouse.generation()

    def lease(self) -> Any:
        return self.warehouse.lease_backend().read()


@pytest.fixture(scope="module")
def world(postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgWorld]:
    tmp = tmp_path_factory.mktemp("pg_warehouse")
    with fresh_database(postgres_admin_url, prefix="nightshift_pgwh_warehouse") as wh_url:
        warehouse_uri = source_uri(wh_url)
        env = {
            "AIRFLOW_CONN_WAREHOUSE": warehouse_uri,
            "WAREHOUSE_LEASE_TTL_MINUTES": LEASE_TTL_MINUTES,
        }
        with running_source(
            postgres_admin_url,
            tmp,
            prefix="nightshift_pgwh_source",
            seed=11,
            days=6,
            orders_per_day=60,
            env=env,
        ) as running:
            good = PgWorld(**vars(running), warehouse_url=warehouse_uri)
            good.publish(DAY)
            _assert_clean(good)
            yield good


def _assert_clean(world: PgWorld) -> None:
    """Only the published schemas and the control schema: no build, no old generation."""
    names = world.schemas()
    assert set(PUBLISHED_SCHEMAS) <= names
    leftovers = sorted(n for n in names if "__build_" in n or "__old_" in n)
    assert leftovers == [], leftovers
    assert world.builds() == []
    assert not (world.data_dir / "warehouse.duckdb").exists(), "a DuckDB file was written"


def _assert_failed_run_private(world: PgWorld, before: tuple[dict, dict], gen: int) -> None:
    """After a failed run: analytics and the report as they were, nothing published
    (same generation), and every schema that is not a published one is a build schema of
    this day's run, recorded in the control schema for its next attempt to drop."""
    analytics, report = world.published_state()
    assert analytics == before[0], "analytics changed although the run failed"
    assert report == before[1], "the published report changed although the run failed"
    assert world.generation() == gen, "a failed run published"
    names = world.schemas()
    assert set(PUBLISHED_SCHEMAS) <= names
    assert not [n for n in names if "__old_" in n], names
    tokens = {token for token, run in world.builds() if run == RUN_ID}
    assert {token for token, _ in world.builds()} == tokens, world.builds()
    others = names - set(PUBLISHED_SCHEMAS) - {"nightshift_control", "public"}
    private = {f"{s}__build_{t}" for s in PUBLISHED_SCHEMAS for t in tokens}
    assert others <= private, sorted(others - private)


def test_landed_gate_failure_on_postgres_keeps_published_tables_and_rerun_drops_the_build(
    world: PgWorld, capfd: pytest.CaptureFixture[str]
) -> None:
    """A duplicated order id and a NULL item id (a source without its PRIMARY KEYs): the
    landed gate of load_source_db fails naming both; the published PostgreSQL tables stay
    as they were, the failed gate is in the published `ops.quality_results` under the
    run's id; once the source is fixed, the rerun publishes what the oracle computes and
    drops the failed run's build schemas."""
    before = world.published_state()
    gen = world.generation()
    dup, item_of = world.counted_orders(DAY, 2)
    ((item,),) = world.sql("select min(id) from order_items where order_id = :o", {"o": item_of})
    world.sql("alter table orders drop constraint orders_pkey")
    world.sql("alter table order_items drop constraint order_items_pkey")
    world.sql("alter table order_items alter column id drop not null")
    world.sql(
        "insert into orders select id, user_id, status, currency, total + 1, created_at, now() "
        "from orders where id = :id",
        {"id": dup},
    )
    world.sql(
        "insert into order_items (id, order_id, product_id, quantity, unit_price, updated_at) "
        "select null, order_id, product_id, 1, 5.00, now() from order_items where id = :id",
        {"id": item},
    )
    world.sql("update orders set updated_at = now() where id = :id", {"id": dup})
    try:
        log = world.fail(DAY, capfd)
        assert "quality gate failed: 2 critical expectation(s) failed" in log
        assert "expect_column_values_to_be_unique(id) FAILED" in log and f'"id": {dup}' in log
        assert "expect_column_values_to_not_be_null(id) FAILED: 1 of" in log
        assert f"ops.quality_results where run_id = '{RUN_ID}' in postgres warehouse" in log
        _assert_failed_run_private(world, before, gen)
        assert world.builds(), "the failed run began no build: the gate ran before it"

        orders = world.quality("source_db.orders")
        unique = _failed(orders, "expect_column_values_to_be_unique", "id")
        assert unique["severity"] == "critical" and unique["table"] == "source_db.orders"
        assert unique["samples"][0]["id"] == dup and unique["samples"][0]["duplicates"] == 2
        null_id = _failed(world.quality("source_db.order_items"), NOT_NULL, "id")
        assert null_id["unexpected_count"] == 1
    finally:  # the fix: the copy and the keyless item go, the keys come back
        world.sql(
            "delete from orders o using orders p where o.id = :id and p.id = o.id "
            "and o.ctid > p.ctid",
            {"id": dup},
        )
        world.sql("delete from order_items where id is null")
        world.sql("alter table orders add primary key (id)")
        world.sql("alter table order_items add primary key (id)")
        world.sql("update orders set updated_at = now() where id = :id", {"id": dup})
    world.publish(DAY)
    assert world.generation() == gen + 1
    _assert_clean(world)
    orders = world.quality("source_db.orders")
    assert orders and all(row[1] for row in orders.values()), "a check still fails after the fix"
    assert world.quality("source_db.order_items")[(NOT_NULL, "id")][1] is True


def test_emptied_source_table_stops_before_the_merge_on_postgres(
    world: PgWorld, capfd: pytest.CaptureFixture[str]
) -> None:
    """An emptied `order_items` lands an empty key set; the mass-delete guard stops
    load_source_db before the merge: the published PostgreSQL tables are unchanged and
    nothing was published."""
    before = world.published_state()
    gen = world.generation()
    published_items = world.warehouse.read_arrow("select count(*) as n from {raw}.order_items")
    world.sql("create table order_items_saved as select * from order_items")
    world.sql("delete from order_items")
    try:
        log = world.fail(DAY, capfd)
        assert "mass delete stopped before the merge, nothing was loaded" in log
        assert "raw.order_items: this run would delete" in log
        _assert_failed_run_private(world, before, gen)
        after_items = world.warehouse.read_arrow("select count(*) as n from {raw}.order_items")
        assert after_items == published_items
        # the build was not merged into either: its raw.order_items is the published one
        [(token, _)] = world.builds()
        ((built,),) = world.wh_sql(
            f'select count(*) from "raw__build_{token}".order_items'  # noqa: S608
        )
        assert built == published_items.column("n")[0].as_py()
    finally:  # the items come back (as new versions: the extract reads them again)
        world.sql("insert into order_items select * from order_items_saved")
        world.sql("update order_items set updated_at = now()")
        world.sql("drop table order_items_saved")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the run: its process group and every descendant (a task runner may sit in
    its own group)."""
    tree = _descendants(proc.pid)
    for p in tree:
        try:
            os.killpg(os.getpgid(p.pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert alive == [], f"processes of the killed run still alive: {alive}"


def _other_sessions(world: PgWorld) -> list[tuple]:
    return world.wh_sql(
        "select pid, state, left(query, 80) from pg_stat_activity "
        "where datname = current_database() and pid <> pg_backend_pid()"
    )


def test_run_killed_inside_publish_leaves_postgres_tables_and_the_next_run_takes_over(
    world: PgWorld, tmp_path: Path
) -> None:
    """The run is SIGKILLed inside its publish transaction, after every schema was
    renamed and before the commit (the process running the DAG and its tasks, at once).
    PostgreSQL rolls the transaction back: the published tables are exactly as before and
    the generation unchanged. The killed run's lease stays until its TTL; the next run of
    the same day waits for it, takes it over, drops the killed build and publishes what
    the oracle computes, then releases the lease."""
    # the source changes, so a publish that leaked out of the killed run would show
    (cancelled,) = world.counted_orders(DAY, 1)
    world.sql(
        "update orders set status = 'cancelled', updated_at = now() where id = :id",
        {"id": cancelled},
    )
    before = world.published_state()
    gen = world.generation()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    paused = tmp_path / "paused"
    env = {
        **world.env,
        PAUSE_ENV: str(paused),
        "PYTHONPATH": os.pathsep.join((str(hooks), str(settings.PROJECT_ROOT))),
        "REPORT_TZ": REPORT_TZ,
    }
    script = (
        "from datetime import date; from pipeline.airflow_run import run_dag; "
        f"run_dag(date.fromisoformat({RUN_ID!r}), {{}})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        cwd=settings.PROJECT_ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not paused.exists():
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before publish"
            assert time.monotonic() < deadline, "the run never reached its publish"
            time.sleep(0.2)
        # inside the publish transaction: the renames are done, not committed
        held = world.wh_sql(
            "select count(*) from pg_locks l join pg_stat_activity a using (pid) "
            "where a.datname = current_database() and l.mode = 'AccessExclusiveLock' "
            "and l.granted and a.pid <> pg_backend_pid()"
        )
        assert held[0][0] > 0, "the run holds no lock on the published tables"
    finally:
        _kill_tree(proc)
    deadline = time.monotonic() + 30
    while _other_sessions(world):  # the server ends the killed run's sessions
        assert time.monotonic() < deadline, _other_sessions(world)
        time.sleep(0.2)

    _assert_failed_run_private(world, before, gen)
    killed_builds = world.builds()
    assert [run for _, run in killed_builds] == [RUN_ID], killed_builds
    lease = world.lease()
    assert lease is not None and lease.holder.startswith("dags-test/"), lease

    started = time.monotonic()
    world.publish(DAY)  # the same day again: waits for the lease's TTL, then takes over
    waited = time.monotonic() - started
    print(f"rerun after the killed run: {waited:.0f} s (lease TTL {LEASE_TTL_MINUTES} min)")
    assert world.generation() == gen + 1
    assert snapshot(world.warehouse) != before[0], "the killed run had nothing to publish"
    _assert_clean(world)  # the killed run's build schemas were dropped
    assert world.lease() is None, "the rerun did not release the lease"


READER_SQL = {
    "summary": "select count(*), sum(total_sales_usd), sum(order_count) "
    "from analytics.sales_summary",
    # ETL summed over categories vs ELT per (date, region), in ONE query (one state)
    "disagreements": """
        with etl as (
            select date, region, sum(order_count) as n, sum(total_sales_usd) as usd
            from analytics.daily_sales group by date, region
        )
        select count(*) from etl
        full outer join analytics.sales_summary s using (date, region)
        where etl.n is distinct from s.order_count
           or etl.usd is distinct from s.total_sales_usd
    """,
    "days": "select distinct date from analytics.sales_summary",
}


class Reader(threading.Thread):
    """An analyst looping queries on the published tables (autocommit, as a BI tool)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = libpq_url(url)
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.queries = 0
        self.max_wait = 0.0
        self.day_sets: list[frozenset[date]] = []

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as con:
                while not self.stop.is_set():
                    self._once(con)
        except Exception as exc:  # a connection lost: an error like any other
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _timed(self, con: psycopg.Connection, name: str) -> list[tuple] | None:
        """The query's rows; None (and an error) when it failed."""
        started = time.perf_counter()
        rows = None
        try:
            rows = con.execute(READER_SQL[name]).fetchall()
        except psycopg.Error as exc:
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
        self.max_wait = max(self.max_wait, time.perf_counter() - started)
        self.queries += 1
        return rows

    def _once(self, con: psycopg.Connection) -> None:
        summary = self._timed(con, "summary")
        if summary and not summary[0][0]:
            self.errors.append("sales_summary is empty")
        disagreements = self._timed(con, "disagreements")
        if disagreements and disagreements[0][0]:
            self.errors.append(f"{disagreements[0][0]} (date, region) disagree")
        rows = self._timed(con, "days")
        if rows is None:
            return
        days = frozenset(r[0] for r in rows)
        if self.day_sets and not self.day_sets[-1] <= days:
            self.errors.append(f"days disappeared: {sorted(self.day_sets[-1] - days)}")
        if not self.day_sets or days != self.day_sets[-1]:
            self.day_sets.append(days)


def test_reader_during_a_postgres_publish_sees_one_consistent_state(world: PgWorld) -> None:
    """While the next day's night runs and publishes, an analyst's reader loops: the
    sales_summary totals, daily_sales summed over categories against sales_summary per
    (date, region) in one query, and the set of published days. It never finds a table
    missing, never sees the two tables disagree, never sees the day set shrink, and it
    saw the publish (the new day appeared while it read)."""
    next_day = DAY + timedelta(days=1)
    gen = world.generation()
    reader = Reader(world.warehouse_url)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while reader.queries < 3 and reader.is_alive():
            assert time.monotonic() < deadline, "the reader does not get answers"
            time.sleep(0.05)
        world.publish(next_day)
        time.sleep(0.5)  # a few more queries on the new state
    finally:
        reader.stop.set()
        reader.join(timeout=60)
    ms = reader.max_wait * 1000
    print(f"reader max wait {ms:.0f} ms over {reader.queries} queries")
    assert reader.errors == [], reader.errors[:10]
    assert world.generation() == gen + 1
    first, last = reader.day_sets[0], reader.day_sets[-1]
    assert max(first) <= DAY < next_day == max(last), "the reader did not see the publish"
    assert ms < 5000, "a reader query waited seconds for the publish"
    _assert_clean(world)
