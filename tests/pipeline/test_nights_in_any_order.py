"""Any order of nights gives the same tables (a property test over seeded sequences).

Each sequence (tests/pipeline/nights.py) plays 3-6 nightly runs in a random order with
source changes between some of them, and checks both published tables against the
independent SQL oracle after every run. Two worker processes play the sequences (each
with its own source database, API, data dir and dbt target dir). A failure prints the
sequence and the command that replays it.

`NIGHTSHIFT_NIGHTS_SEQUENCES` sets how many (default 12); `make test-nights-large`
runs 200 for a nightly CI.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from tests.pipeline.nights import make_sequence, run_sequence

SEQUENCES = int(os.environ.get("NIGHTSHIFT_NIGHTS_SEQUENCES", "12"))
FIRST_SEED = int(os.environ.get("NIGHTSHIFT_NIGHTS_FIRST_SEED", "1"))


def _play(seed: int, admin_url: str, target_root: str) -> dict:
    """One worker's sequence; its own dbt target dir (partial parse, DuckDB link), dbt
    through its Python API in the worker (no process start-up per night)."""
    os.environ["DBT_TARGET_PATH"] = str(Path(target_root) / f"worker-{os.getpid()}")
    os.environ["NIGHTSHIFT_DBT_IN_PROCESS"] = "1"
    return run_sequence(seed, admin_url)


def test_sequences_cover_the_orders_the_property_is_about() -> None:
    """The generator of sequences makes the cases the property must hold on."""
    count = max(SEQUENCES, 20)  # the default set, also when fewer are played (test-clock)
    seqs = [make_sequence(seed) for seed in range(FIRST_SEED, FIRST_SEED + count)]
    runs = [[s for s in q.steps if s[0] != "change"] for q in seqs]
    assert all(3 <= sum(2 if s[0] == "backfill" else 1 for s in r) <= 6 for r in runs)

    def days(q: list) -> list:
        return [d for s in q for d in (s[1:] if s[0] == "backfill" else s[1:2])]

    assert any(len(days(r)) != len(set(days(r))) for r in runs), "no repeated day"
    assert any(any(b < a for a, b in zip(days(r), days(r)[1:], strict=False)) for r in runs), (
        "no older day"
    )
    assert any(s[0] == "backfill" for r in runs for s in r), "no backfill"
    kinds = {s[1] for q in seqs for s in q.steps if s[0] == "change"}
    assert kinds == {"next_day", "region_move", "category_move", "cancel", "fx_revision"}


@pytest.mark.timeout(1800)  # 12 sequences of full nights: 8-15 min on 2 busy cores
def test_any_order_of_nights_gives_the_oracle_tables(postgres_admin_url: str) -> None:
    seeds = range(FIRST_SEED, FIRST_SEED + SEQUENCES)
    context = multiprocessing.get_context("spawn")  # a clean process: env, dbt, DuckDB
    with tempfile.TemporaryDirectory(prefix="nights-dbt-") as target_root:
        with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
            results = list(
                pool.map(
                    _play, seeds, [postgres_admin_url] * len(seeds), [target_root] * len(seeds)
                )
            )
    failed = [r for r in results if not r["ok"]]
    for result in failed:
        print(f"FAILED sequence {result['sequence']}\n  " + "\n  ".join(result["log"]))
        print(f"  error: {result['error']}")
    if failed:
        seeds_failed = [r["sequence"] for r in failed]
        pytest.fail(
            f"{len(failed)} of {len(results)} sequence(s) broke the property; replay one with "
            f"`.venv/bin/python -m tests.pipeline.nights --seed <seed>`: {seeds_failed[:3]}"
        )
    assert len(results) == SEQUENCES
