"""The bucket summaries of a key column: the same numbers on every engine, NULL keys in none."""

from __future__ import annotations

import sqlite3

import duckdb

from core import key_summary


def _rows(con, dialect: str) -> set[tuple[int, int, int, int]]:
    sql, values = key_summary.qmark(
        key_summary.summary_sql("k", "t", dialect), key_summary.params()
    )
    return {tuple(int(v) for v in row) for row in con.execute(sql, values).fetchall()}


def test_a_null_key_is_in_no_bucket_and_both_engines_agree() -> None:
    keys = [1, 2, 511, 512, 513, 5000, None, None]
    lite = sqlite3.connect(":memory:")
    lite.execute("create table t (k integer)")
    lite.executemany("insert into t values (?)", [(k,) for k in keys])
    duck = duckdb.connect()
    duck.execute("create table t (k bigint)")
    duck.executemany("insert into t values (?)", [(k,) for k in keys])
    found = _rows(lite, "sqlite")
    assert found == _rows(duck, "duckdb")
    assert sum(n for _, n, _, _ in found) == 6  # the NULLs are counted nowhere
    assert {b for b, _, _, _ in found} == {0, 1, 9}
