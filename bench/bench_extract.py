"""Benchmark the extract of `orders` from PostgreSQL: full and a ~1% incremental slice.

Usage: python bench/bench_extract.py [--orders 5000000] [--repeat 3]
Admin URL from NIGHTSHIFT_BENCH_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres);
the data lives in database `nightshift_bench` (filled by demo.generator, reused when it
already holds exactly --orders orders).

Methods, each run in a fresh subprocess (peak RSS from os.wait4 of that process only):
  psql      psql -c "\\copy (select ...) to /dev/null" (text COPY, the baseline)
  generic   SQLAlchemy stream_results + pa.array per column (the generic reader) -> Parquet
  pg_copy   extract.pg_copy.stream_pg_batches (binary COPY) -> Parquet
  parallel  extract.key_ranges: 2 key ranges, 2 threads, one exported snapshot -> Parquet
Parquet is written with extract.landing.write_landing_table (zstd), as the pipeline does.
Seconds are the best of --repeat runs, timed inside the process (imports excluded);
MB/s counts the Parquet bytes (psql: the COPY text bytes); peak RSS is the worst run.
Ends with: BENCH extract full_ratio=<x> peak_rss_mib=<n> incr_share=<y>, for the best
product method (pg_copy or parallel): the fastest full extract within 400 MiB peak RSS.
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
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import psycopg  # noqa: E402
import pyarrow as pa  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from psycopg import sql  # noqa: E402

DEFAULT_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DB_NAME = "nightshift_bench"
TABLE = "orders"
METHODS = ("psql", "generic", "pg_copy", "parallel")
PRODUCT = ("pg_copy", "parallel")
RSS_TARGET_MIB = 400
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("user_id", pa.int64()),
        ("status", pa.string()),
        ("currency", pa.string()),
        ("total", pa.decimal128(12, 2)),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _db_url(admin: str, name: str) -> str:
    return sa.make_url(admin).set(database=name).render_as_string(hide_password=False)


# ----------------------------------------------------------------------------- setup


def prepare(admin: str, orders: int) -> str:
    """The bench database with exactly `orders` orders (generated when needed)."""
    from demo.generator import generate

    url = _db_url(admin, DB_NAME)
    with psycopg.connect(_libpq(admin), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
        count = None
        if exists:
            try:
                with psycopg.connect(_libpq(url)) as db:
                    count = db.execute("SELECT count(*) FROM orders").fetchone()[0]
            except psycopg.Error:
                count = None
        if count == orders:
            print(f"reusing {DB_NAME}: {orders} orders", file=sys.stderr)
            return url
        if exists:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
    print(f"generating {orders} orders into {DB_NAME} ...", file=sys.stderr)
    started = time.perf_counter()
    generate(url, seed=42, days=60, end_date=date(2026, 11, 26), scale=orders, batch_size=50_000)
    with psycopg.connect(_libpq(url), autocommit=True) as db:
        db.execute("VACUUM (ANALYZE) orders")
    print(f"generated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return url


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
# Each runs in its own process (`--run`), prints {"rows", "bytes"} as JSON.


def _where(cutoff: str | None) -> tuple[str, tuple]:
    return ("updated_at > %s", (cutoff,)) if cutoff else ("", ())


def _land(batches, landing: Path) -> dict:
    from extract.landing import write_landing_table

    manifest = write_landing_table(
        batches,
        schema=SCHEMA,
        landing_root=landing,
        source="source_db",
        table_name=TABLE,
        run_id="bench",
        cursor_column="updated_at",
    )
    return {"rows": manifest["rows"], "bytes": manifest["bytes"]}


BATCH_ROWS = 100_000


def run_pg_copy(url: str, cutoff: str | None, landing: Path) -> dict:
    from extract.pg_copy import stream_pg_batches

    where, params = _where(cutoff)
    batches = stream_pg_batches(
        url,
        table=TABLE,
        columns=SCHEMA.names,
        schema=SCHEMA,
        where_sql=where,
        params=params,
        batch_rows=BATCH_ROWS,
    )
    return _land(batches, landing)


def run_parallel(url: str, cutoff: str | None, landing: Path, degree: int = 2) -> dict:
    from extract.key_ranges import extract_parallel, split_key_ranges
    from extract.pg_copy import connect, stream_pg_batches

    where, params = _where(cutoff)
    with connect(url) as conn:
        # A small read (the incremental slice) gets one range: one plain stream.
        ranges = split_key_ranges(
            conn, TABLE, "id", degree, where, params, min_rows_per_range=500_000
        )
    if len(ranges) < 2:
        return run_pg_copy(url, cutoff, landing)

    def read_range(conn, lo: int, hi: int):
        clause = '"id" BETWEEN %s AND %s' + (f" AND {where}" if where else "")
        return stream_pg_batches(
            url,
            table=TABLE,
            columns=SCHEMA.names,
            schema=SCHEMA,
            where_sql=clause,
            params=(lo, hi, *params),
            conn=conn,
            batch_rows=BATCH_ROWS,
        )

    return _land(extract_parallel(url, TABLE, ranges, read_range, max_workers=degree), landing)


def run_generic(url: str, cutoff: str | None, landing: Path, batch_size: int = 50_000) -> dict:
    """The generic reader as extract.db_extract does it (stream_results + pa.array)."""
    from datetime import UTC, datetime
    from decimal import Decimal

    def to_utc(v):
        if v is None:
            return None
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    quantum = Decimal("0.01")

    def to_decimal(v):
        if v is None:
            return None
        q = v.quantize(quantum)
        if q != v:
            raise ValueError(v)
        return q

    conv = {
        "total": to_decimal,
        "created_at": to_utc,
        "updated_at": to_utc,
        "status": lambda v: None if v is None else str(v),
        "currency": lambda v: None if v is None else str(v),
    }
    converters = [conv.get(name, lambda v: v) for name in SCHEMA.names]
    engine = sa.create_engine(url)
    try:
        with (
            engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
            conn.begin(),
        ):
            table = sa.Table(TABLE, sa.MetaData(), autoload_with=conn)
            stmt = sa.select(*table.columns)
            if cutoff:
                stmt = stmt.where(table.c.updated_at > datetime.fromisoformat(cutoff))
            result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(stmt)

            def batches():
                for rows in result.partitions(batch_size):
                    arrays = [
                        pa.array([converters[i](r[i]) for r in rows], type=f.type)
                        for i, f in enumerate(SCHEMA)
                    ]
                    yield pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)

            return _land(batches(), landing)
    finally:
        engine.dispose()


def _vm_hwm_kib() -> int:
    """This process's own peak RSS (VmHWM; ru_maxrss would include the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(method: str, url: str, cutoff: str | None) -> None:
    # Import first (as a running pipeline has): the timing is of the extract itself.
    # pyarrow imports pandas lazily on its first Parquet write: ~0.3 s otherwise counted.
    import pandas  # noqa: F401
    import pyarrow.compute
    import pyarrow.parquet  # noqa: F401

    import extract.key_ranges
    import extract.landing
    import extract.pg_copy  # noqa: F401

    landing = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        started = time.perf_counter()
        fn = {"generic": run_generic, "pg_copy": run_pg_copy, "parallel": run_parallel}[method]
        out = fn(url, cutoff, landing)
        out["seconds"] = time.perf_counter() - started
    finally:
        shutil.rmtree(landing, ignore_errors=True)
    out["rss_kib"] = _vm_hwm_kib()
    print(json.dumps(out))


# ----------------------------------------------------------------------------- driver


def _measure(argv: list[str], capture: bool, stderr_out: bool = False) -> tuple[float, int, str]:
    """Run a process; (wall seconds, peak RSS in KiB, stdout (or stderr))."""
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
    return seconds, usage.ru_maxrss, err if stderr_out else out


def run_method(method: str, url: str, cutoff: str | None) -> dict:
    if method == "psql":
        query = "select * from orders" + (f" where updated_at > '{cutoff}'" if cutoff else "")
        argv = ["psql", "-X", "-q", _libpq(url), "-c", f"\\copy ({query}) to /dev/null"]
        seconds, rss, _ = _measure(argv, False)
        if shutil.which("time") or Path("/usr/bin/time").exists():
            # psql's own peak (wait4 on a child of this big process over-reports it)
            _, _, out = _measure(["/usr/bin/time", "-f", "%M", *argv], False, stderr_out=True)
            rss = int(out.strip().splitlines()[-1])
        return {"seconds": seconds, "rss_kib": rss}
    argv = [sys.executable, __file__, "--run", method, "--url", url]
    argv += ["--batch-rows", str(BATCH_ROWS)]
    if cutoff:
        argv += ["--cutoff", cutoff]
    _, rss, out = _measure(argv, True)
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
    parser.add_argument("--orders", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch-rows", type=int, default=100_000, help="rows per batch")
    parser.add_argument("--run", choices=METHODS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--cutoff", help=argparse.SUPPRESS)
    args = parser.parse_args()
    BATCH_ROWS = args.batch_rows
    if args.run:
        child(args.run, args.url, args.cutoff)
        return 0

    admin = os.environ.get("NIGHTSHIFT_BENCH_PG_URL", DEFAULT_ADMIN)
    url = prepare(admin, args.orders)
    cutoff = incremental_cutoff(url)
    methods = [m for m in args.methods.split(",") if m]
    copy_bytes = {
        mode: copy_text_bytes(url, cut) for mode, cut in (("full", None), ("incr", cutoff))
    }
    # Warm the cache once so the first method measured is not penalised.
    run_method("psql", url, None)

    best: dict[tuple[str, str], dict] = {}
    for _ in range(args.repeat):
        for mode, cut in (("full", None), ("incr", cutoff)):
            for method in methods:
                r = run_method(method, url, cut)
                key = (method, mode)
                prev = best.get(key)
                r["rss_kib"] = max(r["rss_kib"], prev["rss_kib"] if prev else 0)
                if prev is None or r["seconds"] < prev["seconds"]:
                    best[key] = r
                else:
                    prev["rss_kib"] = r["rss_kib"]

    base = {mode: best[("psql", mode)]["seconds"] for mode in ("full", "incr")}
    print(
        f"\nextract of `orders` ({args.orders} rows; incremental: updated_at > {cutoff}); "
        f"best of {args.repeat}"
    )
    header = (
        f"{'method':<10} {'mode':<5} {'rows':>9} {'seconds':>8} {'rows/s':>11} "
        f"{'MB/s':>7} {'peak MiB':>9} {'x psql':>7}"
    )
    print(header)
    print("-" * len(header))
    for mode in ("full", "incr"):
        for method in methods:
            r = best[(method, mode)]
            rows = r.get("rows")
            if rows is None:  # psql: count from the database
                rows = _count(url, cutoff if mode == "incr" else None)
            nbytes = r.get("bytes", copy_bytes[mode])
            print(
                f"{method:<10} {mode:<5} {rows:>9} {r['seconds']:>8.2f} "
                f"{rows / r['seconds']:>11,.0f} {nbytes / 1e6 / r['seconds']:>7.1f} "
                f"{r['rss_kib'] / 1024:>9.0f} {r['seconds'] / base[mode]:>7.2f}"
            )
    product = [m for m in methods if m in PRODUCT] or [m for m in methods if m != "psql"]
    # The fastest full extract within the memory target (else the fastest).
    fits = [m for m in product if best[(m, "full")]["rss_kib"] <= RSS_TARGET_MIB * 1024]
    winner = min(fits or product, key=lambda m: best[(m, "full")]["seconds"])
    full = best[(winner, "full")]
    ratio = full["seconds"] / base["full"]
    share = best[(winner, "incr")]["seconds"] / full["seconds"]
    print(f"best product method: {winner}")
    print(
        f"BENCH extract full_ratio={ratio:.2f} peak_rss_mib={full['rss_kib'] / 1024:.0f} "
        f"incr_share={share:.3f}"
    )
    return 0


def _count(url: str, cutoff: str | None) -> int:
    with psycopg.connect(_libpq(url)) as db:
        if cutoff:
            return db.execute(
                "SELECT count(*) FROM orders WHERE updated_at > %s", (cutoff,)
            ).fetchone()[0]
        return db.execute("SELECT count(*) FROM orders").fetchone()[0]


if __name__ == "__main__":
    raise SystemExit(main())
