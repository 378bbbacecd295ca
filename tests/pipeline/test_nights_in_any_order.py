"""Any order of nights gives the same tables (a property test over seeded sequences).

Each sequence (tests/pipeline/nights.py) plays 3-6 nightly runs in a random order with
source changes between some of them, and checks both published tables against the
independent SQL oracle after every run. Two worker processes play the sequences (each
with its own source database, API, data dir and dbt target dir). A failure prints the
sequence and the command that replays it.

`make test` plays 7 sequences from seed 66: the shortest run of seeds that holds every
case the property is about (every kind of source change, a day run twice, an older day
after a newer one, backfills; 26 nights), checked by the first test below.
`NIGHTSHIFT_NIGHTS_SEQUENCES` and `NIGHTSHIFT_NIGHTS_FIRST_SEED` choose others;
`make test-nights-large` plays 200 for a nightly CI.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from tests.pipeline.nights import make_sequence, run_sequence

DEFAULT_SEQUENCES, DEFAULT_FIRST_SEED = 7, 66
SEQUENCES = int(os.environ.get("NIGHTSHIFT_NIGHTS_SEQUENCES", DEFAULT_SEQUENCES))
FIRST_SEED = int(os.environ.get("NIGHTSHIFT_NIGHTS_FIRST_SEED", DEFAULT_FIRST_SEED))


def _play(seed: int, admin_url: str, target_root: str) -> dict:
    """One worker's sequence; its own dbt target dir (partial parse, DuckDB link), dbt
    through its Python API in the worker (no process start-up per night)."""
    os.environ["DBT_TARGET_PATH"] = str(Path(target_root) / f"worker-{os.getpid()}")
    os.environ["NIGHTSHIFT_DBT_IN_PROCESS"] = "1"
    return run_sequence(seed, admin_url)


def test_sequences_cover_the_orders_the_property_is_about() -> None:
    """The sequences `make test` plays (the default set, also when fewer are played, as in
    test-clock) hold every case the property must hold on, each at least twice."""
    count = max(SEQUENCES, DEFAULT_SEQUENCES)
    seqs = [make_sequence(seed) for seed in range(FIRST_SEED, FIRST_SEED + count)]
    runs = [[s for s in q.steps if s[0] != "change"] for q in seqs]
    assert all(3 <= sum(2 if s[0] == "backfill" else 1 for s in r) <= 6 for r in runs)

    def days(q: list) -> list:
        return [d for s in q for d in (s[1:] if s[0] == "backfill" else s[1:2])]

    assert sum(len(days(r)) != len(set(days(r))) for r in runs) >= 2, "a day run twice"
    older = sum(any(b < a for a, b in zip(days(r), days(r)[1:], strict=False)) for r in runs)
    assert older >= 2, "an older day after a newer one"
    assert sum(any(s[0] == "backfill" for s in r) for r in runs) >= 2, "backfills"
    kinds = {s[1] for q in seqs for s in q.steps if s[0] == "change"}
    assert kinds == {"next_day", "region_move", "category_move", "cancel", "fx_revision"}


@pytest.mark.timeout(1800)  # 7 sequences, 26 full nights: 3-8 min on 2 busy cores
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
