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


def test_the_named_sql_and_its_qmark_form_agree() -> None:
    """The extract binds the `:name` SQL through SQLAlchemy, a warehouse session its `?`
    form: both give the same buckets for the same keys."""
    import sqlalchemy as sa

    keys = [-1025, -513, -512, -1, 0, 7, 511, 512, 2**40 + 3]
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(sa.text("create table t (k integer)"))
        conn.execute(sa.text("insert into t values (:k)"), [{"k": k} for k in keys])
        named = conn.execute(
            sa.text(key_summary.summary_sql("k", "t", "sqlite")), key_summary.params()
        ).all()
        sql, values = key_summary.qmark(
            key_summary.summary_sql("k", "t", "sqlite"), key_summary.params()
        )
        positional = conn.exec_driver_sql(sql, tuple(values)).all()
    engine.dispose()
    assert {tuple(r) for r in named} == {tuple(r) for r in positional}
    assert {b for b, *_ in named} == {-3, -2, -1, 0, 1, 2**31}


def test_qmark_orders_the_values_and_leaves_the_rest_of_the_sql_alone() -> None:
    sql, values = key_summary.qmark(
        "select a % :w, b::text, :p + :w from t", {"w": 1, "p": 2, "q": 3}
    )
    assert sql == "select a % ?, b::text, ? + ? from t"
    assert values == [1, 2, 1]
