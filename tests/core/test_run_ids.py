"""Run ids and the folder names made from them (core/run_ids.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from core import run_ids


@pytest.mark.parametrize(
    "run_id",
    ["2027-01-15", "scheduled__2027-01-15T02:00:00", "r1.shard-a", "A_b-c.d:e", "9"],
)
def test_valid_run_ids(run_id: str) -> None:
    assert run_ids.is_valid(run_id)
    assert run_ids.check(run_id) == run_id


@pytest.mark.parametrize(
    "run_id",
    ["", "../x", "a/b", "a..b", ".hidden", "_x", "-x", "a b", "a+b", "a\nb", "ü"],
)
def test_invalid_run_ids_are_named_in_the_error(run_id: str) -> None:
    assert not run_ids.is_valid(run_id)
    with pytest.raises(ValueError, match="invalid run id") as err:
        run_ids.check(run_id)
    assert repr(run_id) in str(err.value)


def test_folder_names() -> None:
    assert run_ids.dir_name("r1") == "run=r1"
    assert run_ids.of_dir_name("run=r1.shard-a") == "r1.shard-a"
    assert run_ids.of_dir_name("_latest.json") is None
    assert run_ids.shard_run_id("r1", "eu") == "r1.shard-eu"
    assert run_ids.shard_dirs_glob("r1") == "run=r1.shard-*"
    with pytest.raises(ValueError):
        run_ids.dir_name("../up")


def test_stamps_sort_as_the_times_do() -> None:
    a = datetime(2027, 1, 15, 2, 0, 0, 5, tzinfo=UTC)
    b = datetime(2027, 1, 15, 2, 0, 1, tzinfo=UTC)
    assert run_ids.stamp(a) == "20270115T020000000005Z"
    assert run_ids.stamp(b, micros=False) == "20270115T020001Z"
    assert run_ids.stamp(a) < run_ids.stamp(b)


def test_the_day_a_name_carries() -> None:
    assert run_ids.day_of("run=2027-01-15.shard-a") == date(2027, 1, 15)
    assert run_ids.day_of("2027-01-15.html") == date(2027, 1, 15)
    assert run_ids.day_of("run=2027-02-30") is None  # not a day
    assert run_ids.day_of("_latest.json") is None


def test_expired_keeps_the_running_night_protected_and_undated_names() -> None:
    cutoff = date(2027, 1, 10)
    assert run_ids.expired("run=2027-01-09", cutoff, None, set())
    assert not run_ids.expired("run=2027-01-10", cutoff, None, set())
    assert not run_ids.expired("run=2027-01-09", cutoff, date(2027, 1, 9), set())
    assert not run_ids.expired("run=2027-01-09", cutoff, None, {"run=2027-01-09"})
    assert not run_ids.expired("run=manual", cutoff, None, set())
