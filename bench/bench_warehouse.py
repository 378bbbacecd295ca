"""Benchmark the whole nightly on the DuckDB and the PostgreSQL warehouse, same source.

Usage: python bench/bench_warehouse.py [--orders 1000000] [--days 60] [--prepare-only] [--keep]
Admin URL from NIGHTSHIFT_BENCH_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres).

The source: demo.generator's PostgreSQL source of --orders orders over --days days (seed 42)
and its payments SQLite store, generated once per size and cached: the database as the
template `nightshift_bench_wh_src_<orders>` (its comment records the parameters), the
payments file under data/bench/warehouse/. Each backend gets its own clone of both
(`CREATE DATABASE … TEMPLATE …`, a file copy), so both start from the identical source.

For each backend, in a fresh data dir, with the demo payments API on loopback:
  night 1  `python -m pipeline.nightly --date <last day>`: the first, full load (full_s);
  then     `demo.generator.apply_next_day` on that backend's clone (seed 43): late rows,
           updates, deletes at the source;
  night 2  the next day, incremental (night_s).
Each night is a subprocess (its own settings, clean peak RSS): wall seconds, CPU seconds
of the nightly and its dbt subprocesses (wait4), its peak RSS, and the PostgreSQL server's
CPU seconds over the night (every backend of the server, other clients' included: a busy
machine inflates it). Where the time went comes from the steps' own timings
(data/runs/<run id>/steps/*.json, what `ops.task_metrics` publishes) and the log lines of
the build copy (begin_build), dbt's elapsed time and the publish swap.

During the PostgreSQL nights a reader thread loops two analyst queries on the PUBLISHED
tables (autocommit, as analysts' sessions): the sales_summary aggregate, and daily_sales
summed over categories joined to sales_summary, which must agree for every (date, region)
in the one query. reader_max_ms is the slowest query; an error (after the first publish
made the tables exist) or a disagreement counts in reader_errors (must be 0).
After night 2 the published analytics.sales_summary and analytics.daily_sales of the two
backends are compared row for row.
Ends with:
BENCH warehouse backend=duckdb orders=N night_s=… full_s=… cpu_s=… peak_rss_mib=…
BENCH warehouse backend=postgres orders=N night_s=… full_s=… ratio_to_duckdb=… reader_max_ms=… reader_errors=…
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from psycopg import sql  # noqa: E402

DEFAULT_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CACHE_DIR = ROOT / "data" / "bench" / "warehouse"
SOURCE_PREFIX = "nightshift_bench_wh_src"
WAREHOUSE_DB = "nightshift_bench_wh_warehouse"
SEED, NEXT_DAY_SEED = 42, 43
END = date(2026, 11, 26)  # the other benches' last day; earlier when the clock is earlier
TOKEN = "bench-token"
REPORT_TZ = "UTC"
BACKENDS = ("duckdb", "postgres")

READER_SUMMARY = (
    "select date, region, sum(total_sales_usd), sum(order_count) "
    "from analytics.sales_summary group by 1, 2"
)
READER_PARITY = """
select count(*) filter (where e.order_count is distinct from s.order_count
                           or e.total_sales_usd is distinct from s.total_sales_usd),
       count(*)
from (select date, region, sum(order_count) as order_count,
             sum(total_sales_usd) as total_sales_usd
      from analytics.daily_sales group by date, region) e
full outer join analytics.sales_summary s on e.date = s.date and e.region = s.region
"""
COMPARED = ("sales_summary", "daily_sales")


def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _db_url(admin: str, name: str) -> str:
    return _libpq(sa.make_url(admin).set(database=name).render_as_string(hide_password=False))


def _admin(admin: str) -> psycopg.Connection:
    return psycopg.connect(_libpq(admin), autocommit=True)


def _drop_db(admin: str, name: str) -> None:
    with _admin(admin) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# ----------------------------------------------------------------------------- source


def end_date() -> date:
    """The source's last day: END, or two days ago when the clock says earlier (a night
    for a day that has not started is refused)."""
    return min(END, date.today() - timedelta(days=2))


def source_key(orders: int, days: int, end: date) -> str:
    return f"nightshift bench warehouse source: orders={orders} days={days} seed={SEED} end={end}"


def _day_job(
    url: str,
    seed: int,
    days: int,
    end: date,
    scale: int,
    first_day: int,
    last_day: int,
    suffix: str,
    payments_path: str,
    batch_size: int,
) -> dict[str, int]:
    """Days [first_day, last_day) of demo.generator.generate's orders, with the same RNG
    streams, order ids and payments; item ids count from 1 (the caller shifts them).
    suffix "": straight into the source's tables; else into unlogged copies named
    `<table><suffix>`. Payments go to their own SQLite file."""
    import random

    from demo import generator as g

    plan = g._Plan(seed, end - timedelta(days=days - 1), days, None, scale)
    catalog = [(row[0], g._decimal_to_cents(row[4])) for row in g._products(plan)]
    context = g._OrderContext(plan.end_ts, plan.end, plan.n_users, catalog)
    targets = []
    engine = g.make_engine(url)
    meta = sa.MetaData()
    with engine.begin() as conn:
        for table in (g.orders, g.order_items):
            if suffix:
                name = f"{table.name}{suffix}"
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
                conn.exec_driver_sql(f"CREATE UNLOGGED TABLE {name} (LIKE {table.name})")
                targets.append(table.to_metadata(meta, name=name))
            else:
                targets.append(table)
    t_orders, t_items = targets
    pay = g.open_payments(payments_path)
    order_id = 1 + sum(plan.orders_on(i) for i in range(first_day))
    item_id = 1
    buf_orders: list[tuple] = []
    buf_items: list[tuple] = []
    buf_pay: list[tuple] = []
    counts = {"orders": 0, "order_items": 0, "payments": 0}

    def flush() -> None:
        with engine.begin() as conn:
            g.insert_rows(conn, t_orders, buf_orders)
            if buf_items:
                g.insert_rows(conn, t_items, buf_items)
        g.upsert_payments(pay, buf_pay)
        counts["orders"] += len(buf_orders)
        counts["order_items"] += len(buf_items)
        counts["payments"] += len(buf_pay)
        buf_orders.clear()
        buf_items.clear()
        buf_pay.clear()

    try:
        for index in range(first_day, last_day):
            day = plan.start + timedelta(days=index)
            rng = random.Random(f"{seed}:orders:{day.isoformat()}")
            for created, inserted in g._day_times(rng, day, plan.orders_on(index)):
                order = g._build_order(rng, context, (order_id, item_id), created, inserted)
                buf_orders.append(order.row)
                buf_items.extend(order.items)
                if order.payment is not None:
                    buf_pay.append(order.payment)
                order_id += 1
                item_id += len(order.items)
                if len(buf_orders) + len(buf_items) >= batch_size:
                    flush()
        if buf_orders:
            flush()
    finally:
        pay.close()
        engine.dispose()
    return counts


def _people_job(url: str, seed: int, days: int, end: date, scale: int, batch_size: int) -> dict:
    """generate's users and products, into the source's tables."""
    from demo import generator as g

    plan = g._Plan(seed, end - timedelta(days=days - 1), days, None, scale)
    engine = g.make_engine(url)
    try:
        writer = g._Writer(engine, None, batch_size)
        for row in g._users(plan):
            writer.add(g.users, row)
        for row in g._products(plan):
            writer.add(g.products, row)
        writer.flush()
    finally:
        engine.dispose()
    return {"users": writer.counts["users"], "products": writer.counts["products"]}


def generate_parallel(
    url: str,
    *,
    seed: int,
    days: int,
    end: date,
    scale: int,
    payments_db: Path,
    workers: int,
    batch_size: int = 50_000,
) -> dict[str, Any]:
    """demo.generator.generate(url, seed, days, end, scale, payments_db, if_exists="replace")
    row for row (same ids and values), in `workers` processes: on 2 CPUs the generator is
    Python-bound, one process leaves the server's COPY and the other core half idle, and
    a shared machine gives each runnable process its share. Users and products are one job,
    the days are cut into contiguous ranges: the first range writes the source's tables
    straight, the others unlogged copies appended in day order at the end (order ids are
    known from the plan; item ids are shifted by the items of the ranges before). The
    secondary indexes are built once at the end instead of row by row."""
    import multiprocessing
    import sqlite3
    from concurrent.futures import ProcessPoolExecutor

    from demo import generator as g

    started = time.perf_counter()
    engine = g.make_engine(url)
    try:
        g.metadata.drop_all(engine)
        g.metadata.create_all(engine)
        with engine.begin() as conn:
            for table in g.TABLES:
                for index in table.indexes:
                    index.drop(conn)
    finally:
        engine.dispose()
    payments_db.unlink(missing_ok=True)
    n_ranges = max(1, min(days, 2 * workers))
    bounds = [days * k // n_ranges for k in range(n_ranges + 1)]
    parts = [
        payments_db if k == 0 else payments_db.with_name(f"{payments_db.name}.part{k}")
        for k in range(n_ranges)
    ]
    for part in parts:
        part.unlink(missing_ok=True)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        people = pool.submit(_people_job, url, seed, days, end, scale, batch_size)
        jobs = [
            pool.submit(
                _day_job,
                url,
                seed,
                days,
                end,
                scale,
                bounds[k],
                bounds[k + 1],
                "" if k == 0 else f"_gen{k}",
                str(parts[k]),
                batch_size,
            )  # fmt: skip
            for k in range(n_ranges)
        ]
        counts = [job.result() for job in jobs]
        rows = people.result()
    generated_s = time.perf_counter() - started
    engine = g.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '512MB'")
            o_cols = ", ".join(c.name for c in g.orders.columns)
            i_cols = [c.name for c in g.order_items.columns]
            shift = counts[0]["order_items"]
            for k in range(1, n_ranges):
                conn.exec_driver_sql(
                    f"INSERT INTO orders ({o_cols}) SELECT {o_cols} FROM orders_gen{k}"
                )
                conn.exec_driver_sql(
                    f"INSERT INTO order_items ({', '.join(i_cols)}) SELECT id + %(shift)s, "
                    f"{', '.join(i_cols[1:])} FROM order_items_gen{k}",
                    {"shift": shift},
                )
                shift += counts[k]["order_items"]
                conn.exec_driver_sql(f"DROP TABLE orders_gen{k}")
                conn.exec_driver_sql(f"DROP TABLE order_items_gen{k}")
            for table in g.TABLES:
                for index in table.indexes:
                    index.create(conn)
    finally:
        engine.dispose()
    with sqlite3.connect(payments_db) as db:
        for part in parts[1:]:
            db.execute("ATTACH DATABASE ? AS part", (str(part),))
            db.execute("INSERT INTO payments SELECT * FROM part.payments ORDER BY rowid")
            db.commit()
            db.execute("DETACH DATABASE part")
    for part in parts[1:]:
        part.unlink()
    for name in ("orders", "order_items", "payments"):
        rows[name] = sum(c[name] for c in counts)
    print(
        f"generated in {workers} processes: {generated_s:.0f}s, appended and indexed in "
        f"{time.perf_counter() - started - generated_s:.0f}s",
        file=sys.stderr,
    )
    return {"rows": rows, "seconds": round(time.perf_counter() - started, 3)}


def prepare_source(admin: str, orders: int, days: int, workers: int = 1) -> tuple[str, Path, date]:
    """(template database, payments file, last day): generated when the cache does not
    hold this size with these parameters; `workers` > 1: generate_parallel (same rows)."""
    from demo.generator import generate

    end = end_date()
    template = f"{SOURCE_PREFIX}_{orders}"
    payments = CACHE_DIR / f"payments_{orders}.db"
    key = source_key(orders, days, end)
    with _admin(admin) as conn:
        row = conn.execute(
            "select shobj_description(oid, 'pg_database') from pg_database where datname = %s",
            (template,),
        ).fetchone()
    if row is not None and row[0] == key and payments.is_file():
        print(f"reusing {template} and {payments.name}: {key}", file=sys.stderr)
        return template, payments, end
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    building = f"{template}_tmp"
    _drop_db(admin, building)
    with _admin(admin) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
    tmp_payments = payments.with_suffix(".db.tmp")
    tmp_payments.unlink(missing_ok=True)
    print(f"generating {orders} orders into {template} ...", file=sys.stderr)
    started, cpu = time.perf_counter(), time.process_time()
    url = _db_url(admin, building).replace("postgresql://", "postgresql+psycopg://", 1)
    if workers > 1:
        summary = generate_parallel(
            url,
            seed=SEED,
            days=days,
            end=end,
            scale=orders,
            payments_db=tmp_payments,
            workers=workers,
        )
    else:
        summary = generate(
            url,
            seed=SEED,
            days=days,
            end_date=end,
            scale=orders,
            payments_db=tmp_payments,
            batch_size=50_000,
            if_exists="replace",
        )
    with psycopg.connect(_db_url(admin, building), autocommit=True) as db:
        db.execute("VACUUM (ANALYZE)")
    print(
        f"generated {summary['rows']} in {time.perf_counter() - started:.0f}s "
        f"(cpu {time.process_time() - cpu:.0f}s)",
        file=sys.stderr,
    )
    # only a complete source becomes the template (a killed generation leaves _tmp)
    _drop_db(admin, template)
    with _admin(admin) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(building), sql.Identifier(template)
            )
        )
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(template), sql.Literal(key)
            )
        )
    os.replace(tmp_payments, payments)
    return template, payments, end


def clone_source(admin: str, template: str, name: str) -> str:
    """A fresh copy of the template: the backend's own source (apply_next_day writes it)."""
    _drop_db(admin, name)
    with _admin(admin) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return _db_url(admin, name)


# ----------------------------------------------------------------------------- server CPU


def _server_cpu_s() -> float | None:
    """CPU seconds of the PostgreSQL server on this machine: the postmaster's own and its
    finished children's (cutime), plus its live children's. None where /proc does not
    show it (another machine, another user)."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, float, float]] = {}  # pid -> (ppid, own, children done)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        if comm != "postgres":
            continue
        fields = rest.split()
        ppid, utime, stime, cutime, cstime = (int(fields[i]) for i in (1, 11, 12, 13, 14))
        procs[int(entry.name)] = (ppid, (utime + stime) / tick, (cutime + cstime) / tick)
    masters = [pid for pid, (ppid, _, _) in procs.items() if ppid not in procs]
    if not masters:
        return None
    total = 0.0
    for master in masters:
        total += procs[master][1] + procs[master][2]
        total += sum(own for ppid, own, _ in procs.values() if ppid == master)
    return total


# ----------------------------------------------------------------------------- nights


def run_night(env: dict[str, str], day: date, log_path: Path, timeout_s: float) -> dict[str, Any]:
    """`python -m pipeline.nightly --date day` in a subprocess: wall, CPU (it and its
    dbt subprocesses), peak RSS (the largest process of the tree), server CPU, steps.
    A night past `timeout_s` is killed (its process group) and fails naming its steps."""
    server_cpu = _server_cpu_s()
    started = time.perf_counter()
    with open(log_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.nightly", "--date", day.isoformat()],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout_s:
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
                proc.returncode = None
                done, _ = read_steps(Path(env["NIGHTSHIFT_DATA_DIR"]), day)
                raise NightTimeout(
                    f"night {day} still running after {timeout_s:.0f}s, killed; steps done: "
                    + ", ".join(f"{k} {v:.1f}s" for k, v in done.items())
                    + f"; log {log_path}"
                )
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    server_after = _server_cpu_s()
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-40:])
        raise RuntimeError(f"night {day} failed ({proc.returncode}); log {log_path}:\n{tail}")
    steps, summaries = read_steps(Path(env["NIGHTSHIFT_DATA_DIR"]), day)
    return {
        "day": day,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "server_cpu_s": None
        if server_cpu is None or server_after is None
        else server_after - server_cpu,
        "steps": steps,
        "details": details(log_path.read_text(), summaries),
    }


class NightTimeout(RuntimeError):
    """A night ran past --night-timeout."""


def read_steps(data_dir: Path, day: date) -> tuple[dict[str, float], dict[str, Any]]:
    """The steps' own timings, in the order they started, and their summaries
    (pipeline/run_metrics.py: what `ops.task_metrics` publishes)."""
    records = [
        json.loads(path.read_text())
        for path in (data_dir / "runs" / day.isoformat() / "steps").glob("*.json")
    ]
    records.sort(key=lambda r: r["started_at"])
    return (
        {r["task"]: float(r["seconds"]) for r in records},
        {r["task"]: r.get("summary") or {} for r in records},
    )


# the build copy (begin_build) logs its time: PostgreSQL warehouse/backends/postgres.py,
# DuckDB warehouse/publish.py (dbt's in-process run takes over logging afterwards, so the
# later figures come from the steps' summaries)
_COPY_LOG = (r"build \S+ of generation \S+ in ([\d.]+)s", r"build copy .* in ([\d.]+)s")


def details(log: str, summaries: dict[str, Any]) -> dict[str, Any]:
    """Sub-step seconds: the build copy, dbt's own elapsed time, the publish swap, and
    dbt's slowest nodes."""
    found: dict[str, Any] = {}
    for pattern in _COPY_LOG:
        hits = re.findall(pattern, log)
        if hits:
            found["begin_build copy"] = float(hits[-1])
            break
    dbt = summaries.get("dbt_build", {})
    if dbt.get("elapsed_s") is not None:
        found["dbt elapsed"] = float(dbt["elapsed_s"])
    found["dbt slowest"] = dbt.get("slowest", [])
    if summaries.get("publish", {}).get("swap_seconds") is not None:
        found["publish swap"] = float(summaries["publish"]["swap_seconds"])
    return found


class Reader(threading.Thread):
    """Analyst queries on the published tables in a loop, each one's latency recorded."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.before_publish = 0  # queries before the first publish made the tables exist

    def run(self) -> None:
        con: psycopg.Connection | None = None
        published = False
        while not self.stop.is_set():
            try:
                if con is None or con.closed:
                    con = psycopg.connect(self.url, autocommit=True)
                for query in (READER_SUMMARY, READER_PARITY):
                    started = time.perf_counter()
                    rows = con.execute(query).fetchall()
                    self.latencies.append(time.perf_counter() - started)
                    published = True
                    if query is READER_PARITY and rows[0][0]:
                        self.errors.append(f"{rows[0][0]} of {rows[0][1]} (date, region) disagree")
            except psycopg.errors.UndefinedTable:
                if published:
                    self.errors.append("a published table is missing")
                else:
                    self.before_publish += 1
                    self.stop.wait(0.2)
            except psycopg.Error as exc:
                self.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                if con is not None and con.broken:
                    con = None
            self.stop.wait(0.01)
        if con is not None:
            con.close()

    def max_ms(self) -> float:
        return max(self.latencies) * 1000 if self.latencies else float("nan")


def run_backend(
    backend: str,
    admin: str,
    template: str,
    payments: Path,
    end: date,
    work: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Night 1, the next day at the source, night 2, on `backend` with its own source."""
    from demo.generator import apply_next_day
    from demo.run import running_api

    data_dir = work / backend / "data"
    data_dir.mkdir(parents=True)
    source = clone_source(admin, template, f"{template}_{backend}")
    payments_copy = work / backend / "payments.db"
    shutil.copyfile(payments, payments_copy)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AIRFLOW_CONN_SOURCE_DB": source,
        "NIGHTSHIFT_DATA_DIR": str(data_dir),
        "REPORT_TZ": REPORT_TZ,
        "NIGHTSHIFT_NO_AIRFLOW_LOOKUP": "1",
        "AIRFLOW_HOME": str(work / backend / "airflow"),
    }
    for name in ("AIRFLOW_CONN_WAREHOUSE", "WAREHOUSE_PATH", "DBT_TARGET", "LANDING_DIR"):
        env.pop(name, None)
    reader = None
    if backend == "postgres":
        _drop_db(admin, WAREHOUSE_DB)
        with _admin(admin) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(WAREHOUSE_DB)))
        env["AIRFLOW_CONN_WAREHOUSE"] = _db_url(admin, WAREHOUSE_DB)
        if args.pg_work_mem:  # every libpq session of the night: psycopg and dbt's
            env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} -c work_mem={args.pg_work_mem}".strip()
        reader = Reader(env["AIRFLOW_CONN_WAREHOUSE"])
    out: dict[str, Any] = {"backend": backend, "source": source}
    with running_api(payments_copy, token=TOKEN) as api_uri:
        env["AIRFLOW_CONN_PAYMENTS_API"] = api_uri
        if reader is not None:
            reader.start()
        try:
            out["night1"] = run_night(env, end, work / backend / "night1.log", args.night_timeout)
            print(f"{backend} night 1 ({end}): {out['night1']['wall_s']:.1f}s", file=sys.stderr)
            started = time.perf_counter()
            summary = apply_next_day(
                source.replace("postgresql://", "postgresql+psycopg://", 1),
                seed=NEXT_DAY_SEED,
                payments_db=payments_copy,
            )
            out["next_day_s"] = time.perf_counter() - started
            day2 = date.fromisoformat(str(summary["date"]))
            out["night2"] = run_night(env, day2, work / backend / "night2.log", args.night_timeout)
            print(f"{backend} night 2 ({day2}): {out['night2']['wall_s']:.1f}s", file=sys.stderr)
        finally:
            if reader is not None:
                reader.stop.set()
                reader.join()
    if reader is not None:
        out["reader"] = {
            "queries": len(reader.latencies),
            "max_ms": reader.max_ms(),
            "errors": reader.errors,
            "before_publish": reader.before_publish,
        }
    out["warehouse"] = env.get("AIRFLOW_CONN_WAREHOUSE") or str(data_dir / "warehouse.duckdb")
    return out


# ----------------------------------------------------------------------------- checks


def _norm(value: Any) -> Any:
    if isinstance(value, Decimal):
        return value.normalize()
    if isinstance(value, float):
        return round(value, 9)
    return value


def published_rows(where: str, table: str) -> tuple[list[str], list[tuple]]:
    """Every row of analytics.<table>, columns by name, sorted (either backend)."""
    if where.startswith("postgresql://"):
        with psycopg.connect(where) as con:
            cur = con.execute(f"select * from analytics.{table}")
            names = [d.name for d in cur.description]
            rows = cur.fetchall()
    else:
        from warehouse.backends.duckdb import connect

        con = connect(where, read_only=True, memory_limit=None)
        try:
            cur = con.execute(f"select * from analytics.{table}")
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        finally:
            con.close()
    order = sorted(range(len(names)), key=lambda i: names[i])
    picked = [tuple(_norm(row[i]) for i in order) for row in rows]
    return [names[i] for i in order], sorted(picked, key=repr)


def compare_published(duck: str, pg: str) -> list[str]:
    """Differences between the two backends' published tables (empty: equal)."""
    problems = []
    for table in COMPARED:
        d_names, d_rows = published_rows(duck, table)
        p_names, p_rows = published_rows(pg, table)
        if d_names != p_names:
            problems.append(f"{table}: columns {d_names} (duckdb) vs {p_names} (postgres)")
            continue
        only_d, only_p = set(d_rows) - set(p_rows), set(p_rows) - set(d_rows)
        if only_d or only_p or len(d_rows) != len(p_rows):
            problems.append(
                f"{table}: {len(d_rows)} vs {len(p_rows)} rows, {len(only_d)} only in duckdb "
                f"(e.g. {sorted(only_d, key=repr)[:2]}), {len(only_p)} only in postgres "
                f"(e.g. {sorted(only_p, key=repr)[:2]})"
            )
        else:
            print(f"equal: analytics.{table}, {len(d_rows)} rows on both backends")
    return problems


# ----------------------------------------------------------------------------- report


def step_table(results: dict[str, dict[str, Any]]) -> str:
    """Seconds per step, one column per backend and night; sub-steps indented."""
    columns = [(b, n) for b in results for n in ("night1", "night2")]
    steps: list[str] = []
    for backend, night in columns:
        for step in results[backend][night]["steps"]:
            if step not in steps:
                steps.append(step)
    head = f"{'step (s)':26}" + "".join(f"{f'{b} n{n[-1]}':>13}" for b, n in columns)
    lines = [head, "-" * len(head)]

    def row(label: str, values: list[float | None]) -> str:
        return f"{label:26}" + "".join(
            f"{'-' if v is None else f'{v:.3f}' if abs(v) < 0.1 else f'{v:.2f}':>13}"
            for v in values
        )

    for step in steps:
        lines.append(row(step, [results[b][n]["steps"].get(step) for b, n in columns]))
        if step == "load_source_db":
            lines.append(
                row(
                    "  begin_build copy",
                    [results[b][n]["details"].get("begin_build copy") for b, n in columns],
                )
            )
        if step == "dbt_build":
            lines.append(
                row(
                    "  dbt elapsed",
                    [results[b][n]["details"].get("dbt elapsed") for b, n in columns],
                )
            )
        if step == "publish":
            lines.append(
                row("  swap", [results[b][n]["details"].get("publish swap") for b, n in columns])
            )
    lines.append(
        row(
            "start-up, lease, between",
            [results[b][n]["wall_s"] - sum(results[b][n]["steps"].values()) for b, n in columns],
        )
    )
    lines.append(row("night wall", [results[b][n]["wall_s"] for b, n in columns]))
    lines.append(row("night cpu (client)", [results[b][n]["cpu_s"] for b, n in columns]))
    lines.append(
        row("server cpu (all clients)", [results[b][n]["server_cpu_s"] for b, n in columns])
    )
    lines.append(row("peak rss MiB", [results[b][n]["peak_rss_mib"] for b, n in columns]))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--prepare-only", action="store_true", help="make the cached source only")
    parser.add_argument("--keep", action="store_true", help="keep the clones and run dirs")
    parser.add_argument(
        "--night-timeout", type=float, default=3600, help="seconds before a night is killed"
    )
    parser.add_argument(
        "--pg-work-mem",
        default="",
        help="what-if: work_mem of the PostgreSQL nights' sessions (PGOPTIONS), e.g. 256MB; "
        "default: the server's",
    )
    args = parser.parse_args()
    admin = os.environ.get("NIGHTSHIFT_BENCH_PG_URL", DEFAULT_ADMIN)

    template, payments, end = prepare_source(admin, args.orders, args.days)
    if args.prepare_only:
        return 0
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs")
    work = Path(tempfile.mkdtemp(prefix="bench-warehouse-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        for backend in BACKENDS:
            results[backend] = run_backend(backend, admin, template, payments, end, work, args)
        problems = compare_published(
            results["duckdb"]["warehouse"], results["postgres"]["warehouse"]
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            for backend in BACKENDS:
                _drop_db(admin, f"{template}_{backend}")
            _drop_db(admin, WAREHOUSE_DB)
        else:
            print(f"kept {work}, {template}_<backend> and {WAREHOUSE_DB}", file=sys.stderr)

    print(step_table(results))
    for backend, result in results.items():
        for night in ("night1", "night2"):
            slowest = result[night]["details"]["dbt slowest"]
            print(
                f"dbt slowest nodes, {backend} n{night[-1]}: "
                + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in slowest[:5])
            )
    duck, pg = results["duckdb"], results["postgres"]
    reader = pg["reader"]
    for error in reader["errors"][:20]:
        print(f"reader error: {error}")
    print(
        f"reader: {reader['queries']} queries on the published tables, slowest "
        f"{reader['max_ms']:.1f}ms, {len(reader['errors'])} errors or disagreements "
        f"({reader['before_publish']} tries before the first publish made the tables exist)"
    )
    print(f"published tables after night 2: {'EQUAL' if not problems else 'DIFFERENT'}")
    for problem in problems:
        print(f"  {problem}")

    def peak(r: dict[str, Any]) -> float:
        return max(r["night1"]["peak_rss_mib"], r["night2"]["peak_rss_mib"])

    def server(r: dict[str, Any], night: str) -> str:
        value = r[night]["server_cpu_s"]
        return "nan" if value is None else f"{value:.1f}"

    print(
        f"BENCH warehouse backend=duckdb orders={args.orders} "
        f"night_s={duck['night2']['wall_s']:.1f} full_s={duck['night1']['wall_s']:.1f} "
        f"cpu_s={duck['night2']['cpu_s']:.1f} peak_rss_mib={peak(duck):.0f} "
        f"full_cpu_s={duck['night1']['cpu_s']:.1f} server_cpu_s={server(duck, 'night2')}"
    )
    print(
        f"BENCH warehouse backend=postgres orders={args.orders} "
        f"night_s={pg['night2']['wall_s']:.1f} full_s={pg['night1']['wall_s']:.1f} "
        f"ratio_to_duckdb={pg['night2']['wall_s'] / duck['night2']['wall_s']:.2f} "
        f"reader_max_ms={reader['max_ms']:.1f} reader_errors={len(reader['errors'])} "
        f"cpu_s={pg['night2']['cpu_s']:.1f} peak_rss_mib={peak(pg):.0f} "
        f"full_cpu_s={pg['night1']['cpu_s']:.1f} server_cpu_s={server(pg, 'night2')} "
        f"tables_equal={'yes' if not problems else 'no'}"
        + (f" pg_work_mem={args.pg_work_mem}" if args.pg_work_mem else "")
    )
    return 1 if problems or reader["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
