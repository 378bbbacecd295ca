"""Benchmark the landing zone: the same run landed on the local disk and on an S3 API
server on loopback (moto's `moto_server`, its own process), and staged back for the
loader (DuckDB here has no httpfs: a reader copies the committed run to a local stage).

Usage: python bench/bench_landing.py [--rows 1000000] [--repeat 3]
Prints: BENCH landing rows=<n> mb=<parquet MB> local_s=<s> local_mb_per_s=<r>
        local_rows_per_s=<r> s3_s=<s> s3_mb_per_s=<r> s3_rows_per_s=<r>
        stage_s=<s> stage_mb_per_s=<r>
(s3_s: the whole landing to S3 = the local stage write + upload + commit; stage_s: a
fresh host's download of the committed run; medians of --repeat runs.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

import pyarrow as pa  # noqa: E402

from core import settings  # noqa: E402
from extract.landing import LandingOptions, LandingTarget, write_landing_table

KEY, SECRET = "AKIABENCHLANDING0001", "bench-landing-secret"


def _orders(rows: int) -> tuple[pa.Table, pa.Schema]:
    import pyarrow.compute as pc

    ids = pa.array(range(rows), pa.int64())
    base = 1_790_000_000_000_000
    schema = pa.schema(
        [
            ("order_id", pa.int64()),
            ("user_id", pa.int64()),
            ("status", pa.string()),
            ("currency", pa.string()),
            ("total", pa.decimal128(12, 2)),
            ("created_at", pa.timestamp("us", tz="UTC")),
            ("updated_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    statuses = pa.array(["placed", "paid", "shipped", "cancelled"])
    currencies = pa.array(["USD", "EUR", "GBP"])
    table = pa.table(
        {
            "order_id": ids,
            "user_id": pc.multiply(pc.bit_wise_and(ids, 0xFFFF), 7),
            "status": statuses.take(pc.bit_wise_and(ids, 3)),
            "currency": currencies.take(pc.bit_wise_and(ids, 1)),
            "total": pa.array(
                [Decimal(i % 100_000) / 100 for i in range(rows)], pa.decimal128(12, 2)
            ),
            "created_at": pa.array(
                [base + i * 1_000 for i in range(rows)], pa.timestamp("us", tz="UTC")
            ),
            "updated_at": pa.array(
                [base + i * 1_500 for i in range(rows)], pa.timestamp("us", tz="UTC")
            ),
        },
        schema=schema,
    )
    return table, schema


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_server() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def _land(table: pa.Table, schema: pa.Schema, root: Path) -> dict:
    return write_landing_table(
        table.to_batches(max_chunksize=100_000),
        schema=schema,
        target=LandingTarget(
            landing_root=root, source="source_db", table_name="orders", run_id="2026-11-20"
        ),
        options=LandingOptions(cursor_column="updated_at", check_drift=False),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    table, schema = _orders(args.rows)
    proc, endpoint = _moto_server()
    try:
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        local_s, s3_s, stage_s = [], [], []
        size = 0
        with tempfile.TemporaryDirectory(prefix="bench-landing-") as tmp:
            for i in range(args.repeat):
                os.environ.pop("NIGHTSHIFT_LANDING_URL", None)
                root = Path(tmp) / f"local-{i}"
                started = time.perf_counter()
                size = _land(table, schema, root)["bytes"]
                local_s.append(time.perf_counter() - started)
                shutil.rmtree(root)

                os.environ["NIGHTSHIFT_LANDING_URL"] = f"s3://{bucket}/landing"
                os.environ["NIGHTSHIFT_LANDING_STAGE"] = str(Path(tmp) / f"stage-{i}")
                os.environ["AIRFLOW_CONN_LANDING"] = (
                    f"aws://{KEY}:{SECRET}@/?endpoint_url={endpoint}&region_name=us-east-1"
                )
                os.environ["NIGHTSHIFT_NO_AIRFLOW_LOOKUP"] = "1"
                stage = settings.landing_dir()
                started = time.perf_counter()
                _land(table, schema, stage)
                s3_s.append(time.perf_counter() - started)
                shutil.rmtree(stage)

                fresh = Path(tmp) / f"fresh-{i}"
                started = time.perf_counter()
                counts = settings.landing_store().sync_run(fresh, "2026-11-20")
                stage_s.append(time.perf_counter() - started)
                assert counts["downloaded"] == 1, counts
                shutil.rmtree(fresh)
    finally:
        proc.kill()
        proc.wait()
    mb = size / 1e6
    loc, s3, stg = (statistics.median(x) for x in (local_s, s3_s, stage_s))
    print(
        f"BENCH landing rows={args.rows} mb={mb:.1f} local_s={loc:.2f} "
        f"local_mb_per_s={mb / loc:.1f} local_rows_per_s={args.rows / loc:.0f} "
        f"s3_s={s3:.2f} s3_mb_per_s={mb / s3:.1f} s3_rows_per_s={args.rows / s3:.0f} "
        f"stage_s={stg:.2f} stage_mb_per_s={mb / stg:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
