"""Benchmark the payments API extract's memory: a small and a 10x window, each landed by
`extract_payments` in a fresh process (peak RSS is per process), pages generated in
process (no HTTP: the client holds one page at a time anyway).

Usage: python bench/bench_api_extract.py [--payments 100000 1000000] [--page-size 500]
Prints one line per window, then:
BENCH api_extract payments=<small>/<large> peak_rss_mib=<a>/<b> rss_growth=<b/a> rows_per_s=<r>
(rss_growth near 1: memory flat in the window's size; holding the window cost ~1.7 KB
per payment, ~1.6 GB more at 1M.)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

START = datetime(2026, 1, 1, tzinfo=UTC)


class GeneratedPages:
    """`n` payments, one page at a time, as the API sends them (decimal strings, ISO)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def iter_payment_pages(self, updated_since: datetime | None, limit: int = 500):
        for first in range(0, self.n, limit):
            yield [
                {
                    "id": f"pay_{i:09d}",
                    "order_id": i,
                    "amount": f"{i % 100_000}.{i % 100:02d}",
                    "currency": ("USD", "EUR", "GBP", "JPY")[i % 4],
                    "status": ("succeeded", "refunded", "failed")[i % 3],
                    "method": ("card", "bank_transfer", "wallet")[i % 3],
                    "created_at": (START + timedelta(seconds=i)).isoformat(),
                    "updated_at": (START + timedelta(seconds=i, minutes=5)).isoformat(),
                }
                for i in range(first, min(first + limit, self.n))
            ]


def child(n: int, page_size: int) -> None:
    from extract.api_extract import PaymentsPlan, extract_payments

    with tempfile.TemporaryDirectory(prefix="bench-api-extract-") as tmp:
        started = time.perf_counter()
        manifest = extract_payments(
            GeneratedPages(n),  # type: ignore[arg-type]
            PaymentsPlan(
                run_id="bench",
                landing_root=Path(tmp) / "landing",
                quarantine_root=Path(tmp) / "quarantine",
                page_size=page_size,
                now=START + timedelta(days=400),
                max_jump=None,
            ),
        )
        seconds = time.perf_counter() - started
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"rows": manifest["rows"], "seconds": seconds, "rss_kib": rss_kib}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.page_size)
        return 0
    runs = []
    for n in args.payments:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n), "--page-size", str(args.page_size)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        run = json.loads(out.strip().splitlines()[-1])
        assert run["rows"] == n, run
        runs.append(run)
        print(
            f"api_extract payments={n} seconds={run['seconds']:.1f} "
            f"rows_per_s={n / run['seconds']:.0f} peak_rss_mib={run['rss_kib'] / 1024:.0f}",
            file=sys.stderr,
        )
    small, large = runs[0], runs[-1]
    print(
        f"BENCH api_extract payments={args.payments[0]}/{args.payments[-1]} "
        f"peak_rss_mib={small['rss_kib'] / 1024:.0f}/{large['rss_kib'] / 1024:.0f} "
        f"rss_growth={large['rss_kib'] / small['rss_kib']:.2f} "
        f"rows_per_s={args.payments[-1] / large['seconds']:.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
