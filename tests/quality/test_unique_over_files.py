"""The landed gate's uniqueness check across a run's Parquet files: which keys repeat,
how often, in which files, on real Parquet files read by DuckDB."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from quality.validate import MAX_SAMPLES, _ExpectationTally, _unique_over_files


def _write(path: Path, **columns: list) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_duplicates_across_files_are_named_with_their_files_and_counts(tmp_path: Path) -> None:
    a = _write(tmp_path / "part-0.parquet", id=[1, 2, 3, None], v=[1, 1, 1, 1])
    b = _write(tmp_path / "part-1.parquet", id=[3, 3, 4, 2], v=[2, 2, 2, 2])
    acc = _ExpectationTally(config={"kwargs": {}})
    _unique_over_files(acc, [a, b], ["id"], ["id"])
    assert acc.success is False
    assert (acc.element_count, acc.missing_count) == (8, 1)
    assert acc.unexpected_count == 5 and acc.details["duplicated_keys"] == 2  # 3 x3, 2 x2
    assert acc.samples == [
        {"id": 3, "duplicates": 3, "files": ["part-0.parquet", "part-1.parquet"]},
        {"id": 2, "duplicates": 2, "files": ["part-0.parquet", "part-1.parquet"]},
    ]


def test_composite_keys_with_a_null_part_and_the_sample_limit(tmp_path: Path) -> None:
    n = MAX_SAMPLES + 3
    ids = [i for i in range(n) for _ in range(2)]
    a = _write(tmp_path / "a.parquet", k1=ids, k2=[None] * len(ids))
    acc = _ExpectationTally(config={"kwargs": {}})
    _unique_over_files(acc, [a], ["k1", "k2"], ["k1", "k2"])
    assert acc.success is False
    assert acc.details["duplicated_keys"] == n and acc.unexpected_count == 2 * n
    assert len(acc.samples) == MAX_SAMPLES
    assert acc.samples[0] == {"k1": 0, "k2": None, "duplicates": 2, "files": ["a.parquet"]}


def test_unique_keys_pass_and_count_the_rows(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.parquet", id=list(range(100_000)))
    b = _write(tmp_path / "b.parquet", id=list(range(100_000, 150_000)) + [None])
    acc = _ExpectationTally(config={"kwargs": {}})
    _unique_over_files(acc, [a, b], ["id"], ["id"])
    assert acc.success is True and acc.unexpected_count == 0 and acc.samples == []
    assert (acc.element_count, acc.missing_count) == (150_001, 1)
