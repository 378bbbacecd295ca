"""Benchmark the demo generator: N orders into a SQLite file in a temp dir.

Usage: python bench/bench_generator.py [--orders 1000000] [--days 60] [--batch-size 10000]
Prints: BENCH generator orders=<n> seconds=<s> rows_per_s=<r> peak_rss_mib=<m>
(rows_per_s counts every row written: users, products, orders, items, payments).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from demo.generator import generate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--no-payments", action="store_true", help="skip the payments store")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-generator-") as tmp:
        started = time.perf_counter()
        summary = generate(
            f"sqlite:///{Path(tmp) / 'source.db'}",
            seed=42,
            days=args.days,
            end_date=date(2026, 11, 26),
            scale=args.orders,
            payments_db=None if args.no_payments else Path(tmp) / "payments.db",
            batch_size=args.batch_size,
        )
        seconds = time.perf_counter() - started
    rows = sum(summary["rows"].values())
    # ru_maxrss is in KiB on Linux.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"BENCH generator orders={summary['rows']['orders']} seconds={seconds:.1f} "
        f"rows_per_s={rows / seconds:.0f} peak_rss_mib={peak_mib:.0f}"
    )
    print(f"rows={summary['rows']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
