"""Benchmark the extract of `orders` from PostgreSQL: full and a ~1% incremental slice.

Usage: python bench/bench_extract.py [--orders 5000000] [--repeat 3] [--degree 2]
Admin URL from NIGHTSHIFT_BENCH_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres);
the data lives in database `nightshift_bench` (5M orders; `nightshift_bench_<n>` for
other --orders), filled by demo.generator and reused when it holds exactly --orders.

Every product method is the production code path: `extract.db_extract.extract_tables`
for `orders`, landing Parquet with the real landing writer and manifest, in a fresh
subprocess (peak RSS = that process's VmHWM). Full = mode full; incremental = mode
incremental after a watermark (a real `ops.loaded_runs` row in a DuckDB warehouse)
that leaves ~1% of the orders in the window.
  psql      psql -c "\\copy (select ...) to /dev/null" (text COPY, the baseline)
  generic   extract_tables with the generic SQLAlchemy reader (not by default: slow)
  serial    extract_tables, parallel_ranges 1: one binary COPY stream
  parallel  extract_tables, parallel_ranges --degree (default EXTRACT_PARALLELISM, else 2):
            key ranges read at once, one exported snapshot
  adbc      extract_tables with ADBC's PostgreSQL driver (adbc-driver-postgresql: its own
            binary COPY, streamed Arrow record batches) as the reader, cast to the landing
            schema, one stream: the library peer of `serial` (the project's decoder). Its
            own connection, outside the run's snapshot: a bench reader, not a product one
Seconds are the best of --repeat runs, timed inside the process (imports excluded);
MB/s counts the Parquet bytes (psql: the COPY text bytes); peak RSS is the worst run;
"cpu s" is the client process's CPU (all threads; psql: its own), not the server's.
The header quotes the load average: others' work on the machine skews seconds, not the
ratio to psql measured in the same run (without psql in --methods: no ratio, the
ratios print nan). Ends with:
BENCH extract full_ratio=<x> peak_rss_mib=<n> incr_share=<y>, for the best product
method (serial or parallel): the fastest full extract within 400 MiB peak RSS; and with
adbc among the methods (the default):
BENCH extract orders=<n> reader=adbc full_s=<s> ratio_to_psql=<x> ratio_to_decoder=<y>
peak_rss_mib=<m> incr_ratio_to_decoder=<z> (decoder: serial, the same single stream).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from psycopg import sql  # noqa: E402

DEFAULT_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DB_NAME = "nightshift_bench"
TABLE = "orders"
METHODS = ("psql", "generic", "serial", "parallel", "adbc")
DEFAULT_METHODS = ("psql", "serial", "parallel", "adbc")  # generic: 8x slower, ask for it
PRODUCT = ("serial", "parallel")
DEFAULT_ORDERS = 5_000_000
DEFAULT_DEGREE = 2
RSS_TARGET_MIB = 400


def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _db_url(admin: str, name: str) -> str:
    return sa.make_url(admin).set(database=name).render_as_string(hide_password=False)


# ----------------------------------------------------------------------------- setup


def bench_db_name(orders: int) -> str:
    """`nightshift_bench` for the default 5M orders, `nightshift_bench_<n>` for other sizes
    (so that a run at another size does not throw away the 5M database)."""
    return DB_NAME if orders == DEFAULT_ORDERS else f"{DB_NAME}_{orders}"


def prepare(admin: str, orders: int) -> str:
    """The bench database with exactly `orders` orders (generated when needed)."""
    from demo.generator import generate

    db_name = bench_db_name(orders)
    url = _db_url(admin, db_name)
    with psycopg.connect(_libpq(admin), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db_name,)).fetchone()
        count = None
        if exists:
            try:
                with psycopg.connect(_libpq(url)) as db:
                    count = db.execute("SELECT count(*) FROM orders").fetchone()[0]
            except psycopg.Error:
                count = None
        if count == orders:
            print(f"reusing {db_name}: {orders} orders", file=sys.stderr)
            return url
        if exists:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db_name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db_name)))
    started = time.perf_counter()
    base = _db_url(admin, DB_NAME)
    have = _count_orders(base) or 0
    if db_name != DB_NAME and (have == DEFAULT_ORDERS or orders <= have):
        print(f"deriving {orders} orders into {db_name} from {DB_NAME} ...", file=sys.stderr)
        derive(base, url, orders)
    else:
        print(f"generating {orders} orders into {db_name} ...", file=sys.stderr)
        generate(
            url, seed=42, days=60, end_date=date(2026, 11, 26), scale=orders, batch_size=50_000
        )
    with psycopg.connect(_libpq(url), autocommit=True) as db:
        db.execute("VACUUM (ANALYZE) orders")
    print(f"prepared in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return url


def _count_orders(url: str) -> int | None:
    try:
        with psycopg.connect(_libpq(url)) as db:
            return db.execute("SELECT count(*) FROM orders").fetchone()[0]
    except psycopg.Error:
        return None


def derive(base: str, url: str, orders: int) -> None:
    """`orders` generator orders for another size, without generating them again: the
    orders of the `base` database (all tables' generation of 5M orders takes ~1 h on a
    busy 2-CPU machine), cut (the first ids) or repeated with ids shifted past the
    largest, so the values and their widths stay the generator's."""
    from demo.schema import orders as orders_table

    engine = sa.create_engine(url)
    try:
        orders_table.create(engine)  # the generator's DDL, with its updated_at index
    finally:
        engine.dispose()
    columns = ", ".join(c.name for c in orders_table.columns if c.name != "id")
    target = sql.SQL("COPY orders (id, {cols}) FROM STDIN (FORMAT BINARY)").format(
        cols=sql.SQL(columns)
    )
    with psycopg.connect(_libpq(base)) as src, psycopg.connect(_libpq(url)) as dst:
        have, top = src.execute("SELECT count(*), max(id) FROM orders").fetchone()
        copied = 0
        while copied < orders:
            take = min(orders - copied, have)
            query = sql.SQL(
                "COPY (SELECT id + {shift}, {cols} FROM orders ORDER BY id LIMIT {take}) "
                "TO STDOUT (FORMAT BINARY)"
            ).format(shift=top * (copied // have), cols=sql.SQL(columns), take=take)
            with src.cursor().copy(query) as out, dst.cursor().copy(target) as into:
                for chunk in out:
                    into.write(chunk)
            copied += take
        dst.commit()


def incremental_cutoff(url: str) -> str:
    """An updated_at cutoff with ~1% of the orders after it (ISO, UTC)."""
    with psycopg.connect(_libpq(url)) as db:
        n = db.execute("SELECT count(*) FROM orders").fetchone()[0]
        db.execute("SET TimeZone = 'UTC'")
        row = db.execute(
            "SELECT updated_at FROM orders ORDER BY updated_at DESC OFFSET %s LIMIT 1",
            (max(n // 100 - 1, 0),),
        ).fetchone()
        indexed = db.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = i.indkey[0] WHERE i.indrelid = 'orders'::regclass"
            " AND a.attname = 'updated_at'"
        ).fetchone()[0]
    if not indexed:
        print("warning: no index on orders(updated_at): the slice scans the table", file=sys.stderr)
    return row[0].isoformat()


# ----------------------------------------------------------------------------- methods
# Each runs in its own process (`--run`), prints {"rows", "bytes", "seconds", "rss_kib"}.


def watermark_warehouse(path: Path, cutoff: str) -> Path:
    """A warehouse whose `ops.loaded_runs` puts the next orders window at `cutoff`."""
    from extract.tables import DEFAULT_OVERLAP
    from extract.watermark import record_loaded
    from warehouse.backends.duckdb import connect

    end = (datetime.fromisoformat(cutoff) + DEFAULT_OVERLAP).isoformat()
    con = connect(path, memory_limit=None)
    try:
        record_loaded(
            con,
            source="source_db",
            table=TABLE,
            run_id="bench-previous",
            manifest={"mode": "incremental", "window_end": end, "max_cursor": end, "rows": 0},
        )
    finally:
        con.close()
    return path


def run_extract(method: str, url: str, warehouse: Path | None, landing: Path, degree: int) -> dict:
    """`extract_tables` as the nightly runs it, for `orders` only: the full extract
    (mode full) or the incremental window after `warehouse`'s watermark."""
    from dataclasses import replace

    from extract.db_extract import ExtractPlan, extract_tables, read_batches
    from extract.tables import DEFAULT_TABLES

    config = next(c for c in DEFAULT_TABLES if c.name == TABLE)
    config = replace(
        config,
        mode="incremental" if warehouse else "full",
        parallel_ranges=degree if method == "parallel" else 1,
    )
    kwargs = {"reader": read_batches} if method == "generic" else {}
    if method == "adbc":
        kwargs["reader"] = adbc_reader(url)
    if BATCH_ROWS:
        kwargs["batch_size"] = BATCH_ROWS
    manifest = extract_tables(
        url,
        ExtractPlan(
            run_id="bench",
            landing_root=landing,
            warehouse_path=warehouse,
            configs=[config],
            **kwargs,
        ),
    )[TABLE]
    return {"rows": manifest["rows"], "bytes": manifest["bytes"]}


BATCH_ROWS: int | None = None  # None: extract_tables' default


def adbc_reader(url: str):  # noqa: ANN201 - an extract.db_extract.Reader
    """A Reader over ADBC's PostgreSQL driver: the same select the decoder's COPY runs
    (same columns, same window, literals rendered by psycopg), its Arrow record batches
    cast to the landing schema (numeric arrives as text, timestamps at microseconds)."""
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa
    from psycopg import sql as pgsql

    from extract.pg_copy import psycopg_connection, render_where
    from extract.sql_binds import driver_filter

    def read(conn, request):  # noqa: ANN001, ANN202
        table, schema = request.table, request.schema
        pg = psycopg_connection(conn)
        query = pgsql.SQL("select {} from {}").format(
            pgsql.SQL(", ").join(pgsql.Identifier(n) for n in schema.names),
            pgsql.Identifier(table.schema, table.name)
            if table.schema
            else pgsql.Identifier(table.name),
        )
        if request.where_sql:
            where = render_where(*driver_filter(request.where_sql, request.params))
            query = pgsql.Composed([query, pgsql.SQL(" where "), where])
        text = query.as_string(pg)
        with adbc.connect(_libpq(url)) as ac, ac.cursor() as cur:
            cur.execute(text)
            for batch in cur.fetch_record_batch():
                arrays = [
                    column if column.type == field.type else column.cast(field.type)
                    for column, field in zip(batch.columns, schema, strict=True)
                ]
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return read


def _vm_hwm_kib() -> int:
    """This process's own peak RSS (VmHWM; ru_maxrss would include the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(method: str, url: str, warehouse: str | None, degree: int) -> None:
    # Import first (as a running pipeline has): the timing is of the extract itself.
    # pyarrow imports pandas lazily on its first Parquet write: ~0.3 s otherwise counted.
    # Likewise duckdb (the watermark store) and SQLAlchemy's PostgreSQL dialect.
    import duckdb  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.compute  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

    import extract.db_extract
    import extract.key_ranges
    import extract.landing
    import extract.pg_copy  # noqa: F401

    if method == "adbc":
        import adbc_driver_postgresql.dbapi  # noqa: F401

    landing = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        started, cpu = time.perf_counter(), time.process_time()
        out = run_extract(method, url, Path(warehouse) if warehouse else None, landing, degree)
        out["seconds"] = time.perf_counter() - started
        out["cpu_s"] = time.process_time() - cpu  # every thread of this process
    finally:
        shutil.rmtree(landing, ignore_errors=True)
    out["rss_kib"] = _vm_hwm_kib()
    print(json.dumps(out))


# ----------------------------------------------------------------------------- driver


def _measure(
    argv: list[str], capture: bool, stderr_out: bool = False
) -> tuple[float, int, str, float]:
    """Run a process; (wall seconds, peak RSS in KiB, stdout (or stderr), CPU seconds)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    out = proc.stdout.read().decode() if capture else ""
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed ({proc.returncode}): {err[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, usage.ru_maxrss, err if stderr_out else out, cpu


def run_method(
    method: str, url: str, cutoff: str | None, warehouse: Path | None, degree: int
) -> dict:
    if method == "psql":
        query = "select * from orders" + (f" where updated_at > '{cutoff}'" if cutoff else "")
        argv = ["psql", "-X", "-q", _libpq(url), "-c", f"\\copy ({query}) to /dev/null"]
        seconds, rss, _, cpu = _measure(argv, False)
        if shutil.which("time") or Path("/usr/bin/time").exists():
            # psql's own peak (wait4 on a child of this big process over-reports it)
            _, _, out, _ = _measure(["/usr/bin/time", "-f", "%M", *argv], False, stderr_out=True)
            rss = int(out.strip().splitlines()[-1])
        return {"seconds": seconds, "rss_kib": rss, "cpu_s": cpu}
    argv = [sys.executable, __file__, "--run", method, "--url", url, "--degree", str(degree)]
    if BATCH_ROWS:
        argv += ["--batch-rows", str(BATCH_ROWS)]
    if warehouse is not None:
        argv += ["--warehouse", str(warehouse)]
    _, rss, out, _ = _measure(argv, True)
    result = json.loads(out.strip().splitlines()[-1])
    result.setdefault("rss_kib", rss)
    return result


def copy_text_bytes(url: str, cutoff: str | None) -> int:
    """Bytes of the psql baseline's text COPY (measured once, untimed)."""
    query = "select * from orders" + (f" where updated_at > '{cutoff}'" if cutoff else "")
    proc = subprocess.run(
        ["psql", "-X", "-q", _libpq(url), "-c", f"\\copy ({query}) to stdout"],
        stdout=subprocess.PIPE,
        check=True,
    )
    return len(proc.stdout)


def main() -> int:
    global BATCH_ROWS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=DEFAULT_ORDERS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument(
        "--degree",
        type=int,
        default=int(os.environ.get("EXTRACT_PARALLELISM", "0") or 0) or DEFAULT_DEGREE,
        help="key ranges of the parallel method (default: EXTRACT_PARALLELISM, else %(default)s)",
    )
    parser.add_argument("--batch-rows", type=int, help="rows per batch (extract_tables' default)")
    parser.add_argument("--run", choices=METHODS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", help=argparse.SUPPRESS)
    args = parser.parse_args()
    BATCH_ROWS = args.batch_rows
    if args.run:
        child(args.run, args.url, args.warehouse, args.degree)
        return 0

    admin = os.environ.get("NIGHTSHIFT_BENCH_PG_URL", DEFAULT_ADMIN)
    url = prepare(admin, args.orders)
    cutoff = incremental_cutoff(url)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(METHODS)}")
    scratch = Path(tempfile.mkdtemp(prefix="bench-extract-wh-"))
    try:
        warehouse = watermark_warehouse(scratch / "warehouse.duckdb", cutoff)
        best = measure(methods, url, cutoff, warehouse, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(methods, best, url, cutoff, args)
    return 0


def measure(
    methods: list[str], url: str, cutoff: str, warehouse: Path, args: argparse.Namespace
) -> dict[tuple[str, str], dict]:
    """Best (fastest) run per (method, mode) over --repeat rounds; worst peak RSS."""
    run_method("psql", url, None, None, args.degree)  # warm the cache for whoever is first
    best: dict[tuple[str, str], dict] = {}
    for _ in range(args.repeat):
        for mode, cut, wh in (("full", None, None), ("incr", cutoff, warehouse)):
            for method in methods:
                r = run_method(method, url, cut, wh, args.degree)
                key = (method, mode)
                prev = best.get(key)
                r["rss_kib"] = max(r["rss_kib"], prev["rss_kib"] if prev else 0)
                if prev is None or r["seconds"] < prev["seconds"]:
                    best[key] = r
                else:
                    prev["rss_kib"] = r["rss_kib"]
    return best


def report(
    methods: list[str],
    best: dict[tuple[str, str], dict],
    url: str,
    cutoff: str,
    args: argparse.Namespace,
) -> None:
    copy_bytes = {
        mode: copy_text_bytes(url, cut) for mode, cut in (("full", None), ("incr", cutoff))
    }
    # Ratios are to psql measured in the same run; without it (--methods leaves it out)
    # there is no baseline: the "x psql" column shows "-" and the ratios print nan.
    base = (
        {mode: best[("psql", mode)]["seconds"] for mode in ("full", "incr")}
        if "psql" in methods
        else None
    )
    print(
        f"\nextract of `orders` ({args.orders} rows; incremental: updated_at > {cutoff}); "
        f"best of {args.repeat}; parallel degree {args.degree}; load: {_load()}"
    )
    header = (
        f"{'method':<10} {'mode':<5} {'rows':>9} {'seconds':>8} {'rows/s':>11} "
        f"{'MB/s':>7} {'peak MiB':>9} {'x psql':>7} {'cpu s':>6}"
    )
    print(header)
    print("-" * len(header))
    if base is None:
        print("(psql not among --methods: no ratio to psql)")
    for mode in ("full", "incr"):
        for method in methods:
            r = best[(method, mode)]
            rows = r.get("rows")
            if rows is None:  # psql: count from the database
                rows = _count(url, cutoff if mode == "incr" else None)
            nbytes = r.get("bytes", copy_bytes[mode])
            vs_psql = "-" if base is None else f"{r['seconds'] / base[mode]:.2f}"
            print(
                f"{method:<10} {mode:<5} {rows:>9} {r['seconds']:>8.2f} "
                f"{rows / r['seconds']:>11,.0f} {nbytes / 1e6 / r['seconds']:>7.1f} "
                f"{r['rss_kib'] / 1024:>9.0f} {vs_psql:>7} "
                f"{r['cpu_s']:>6.2f}"
            )
    product = [m for m in methods if m in PRODUCT] or [m for m in methods if m != "psql"]
    if not product:  # psql alone: nothing of the product's to rate
        return
    # The fastest full extract within the memory target (else the fastest).
    fits = [m for m in product if best[(m, "full")]["rss_kib"] <= RSS_TARGET_MIB * 1024]
    winner = min(fits or product, key=lambda m: best[(m, "full")]["seconds"])
    full = best[(winner, "full")]
    ratio = "nan" if base is None else f"{full['seconds'] / base['full']:.2f}"
    share = best[(winner, "incr")]["seconds"] / full["seconds"]
    print(f"best product method: {winner}")
    print(
        f"BENCH extract full_ratio={ratio} peak_rss_mib={full['rss_kib'] / 1024:.0f} "
        f"incr_share={share:.3f}"
    )
    if "adbc" in methods:
        adbc, decoder = best[("adbc", "full")], best.get(("serial", "full"))
        vs = "nan" if decoder is None else f"{adbc['seconds'] / decoder['seconds']:.2f}"
        incr = best.get(("serial", "incr"))
        incr_vs = (
            "nan" if incr is None else f"{best[('adbc', 'incr')]['seconds'] / incr['seconds']:.2f}"
        )
        to_psql = "nan" if base is None else f"{adbc['seconds'] / base['full']:.2f}"
        print(
            f"BENCH extract orders={args.orders} reader=adbc full_s={adbc['seconds']:.2f} "
            f"ratio_to_psql={to_psql} ratio_to_decoder={vs} "
            f"peak_rss_mib={adbc['rss_kib'] / 1024:.0f} incr_ratio_to_decoder={incr_vs}"
        )


def _load() -> str:
    """`uptime`'s load averages: other work on the machine skews the seconds."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} CPUs)"


def _count(url: str, cutoff: str | None) -> int:
    with psycopg.connect(_libpq(url)) as db:
        if cutoff:
            return db.execute(
                "SELECT count(*) FROM orders WHERE updated_at > %s", (cutoff,)
            ).fetchone()[0]
        return db.execute("SELECT count(*) FROM orders").fetchone()[0]


if __name__ == "__main__":
    raise SystemExit(main())
