"""A failed dbt test's stored rows (store_failures) in DbtError and in the node's message
(the observed value `ops.quality_results` records), without running dbt."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from warehouse.dbt_runner import (
    DbtError,
    DbtResult,
    NodeResult,
    _add_failing_rows,
    _raise_for_exit,
)

FX_TEST = "test.nightshift.assert_fx_rate_exists_for_every_counted_order"
RELATION = '"warehouse"."ops"."dbt_test__assert_fx_rate_exists_for_every_counted_order"'
ROWS = [
    {
        "currency": "EUR",
        "business_date": dt.date(2026, 11, 3),
        "order_count": 14,
        "example_order_id": 1234,
    },
    {
        "currency": None,
        "business_date": dt.date(2026, 11, 4),
        "order_count": 1,
        "example_order_id": 99,
    },
]


def _fx_node(failures: int = 2, relation: str | None = RELATION) -> NodeResult:
    return NodeResult(
        unique_id=FX_TEST,
        status="fail",
        execution_time=0.1,
        message=f"Got {failures} results, configured to fail if != 0",
        failures=failures,
        relation_name=relation,
    )


def test_failing_rows_name_the_test_and_its_first_rows() -> None:
    node = _fx_node()
    asked = []

    def reader(relation: str, limit: int) -> list[dict]:
        asked.append((relation, limit))
        return ROWS

    _add_failing_rows([node], reader)
    assert asked == [(RELATION, 3)]
    assert node.failing_rows == ROWS
    assert node.message == (
        "2 rows, e.g. currency=EUR business_date=2026-11-03 order_count=14 "
        "example_order_id=1234; currency=NULL business_date=2026-11-04 order_count=1 "
        "example_order_id=99"
    )
    result = DbtResult(args=["build"], returncode=1, nodes=[node])
    with pytest.raises(DbtError) as caught:
        _raise_for_exit(result, [], 0)
    assert str(caught.value) == (
        "dbt build failed (exit 1): dbt test assert_fx_rate_exists_for_every_counted_order "
        f"failed: {node.message}"
    )


def test_one_row_is_singular() -> None:
    node = _fx_node(failures=1)
    _add_failing_rows([node], lambda relation, limit: ROWS[:1])
    assert node.message.startswith("1 row, e.g. currency=EUR ")


def test_unreadable_rows_keep_dbts_message(caplog: pytest.LogCaptureFixture) -> None:
    node = _fx_node()

    def reader(relation: str, limit: int) -> list[dict]:
        raise RuntimeError("relation does not exist")

    with caplog.at_level(logging.WARNING, logger="warehouse.dbt_runner"):
        _add_failing_rows([node], reader)
    assert node.message == "Got 2 results, configured to fail if != 0"
    assert node.failing_rows == []
    assert "cannot read its failing rows from" in caplog.text
    result = DbtResult(args=["build"], returncode=1, nodes=[node])
    with pytest.raises(DbtError, match=rf"{FX_TEST} \[fail\]: Got 2 results"):
        _raise_for_exit(result, [], 0)


def test_tests_without_stored_rows_are_not_read() -> None:
    def reader(relation: str, limit: int) -> list[dict]:
        raise AssertionError(f"read {relation}")

    unstored = _fx_node(relation=None)
    errored = _fx_node()
    errored.status = "error"  # the query failed: no rows were stored
    _add_failing_rows([unstored, errored], reader)
    assert unstored.failing_rows == errored.failing_rows == []


def test_out_of_memory_names_the_limit_and_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_DUCKDB_MEMORY_LIMIT", "384MB")
    node = NodeResult(
        unique_id="test.nightshift.unique_fct_order_items_order_item_id.0dec5f6768",
        status="error",
        execution_time=3.2,
        message="Runtime Error in test unique_fct_order_items_order_item_id\n  Out of Memory "
        "Error: could not allocate block of size 256.0 KiB (366.0 MiB/366.2 MiB used)",
    )
    with pytest.raises(DbtError) as caught:
        _raise_for_exit(DbtResult(args=["build"], returncode=1, nodes=[node]), [], 0)
    assert "unique_fct_order_items_order_item_id" in str(caught.value)
    assert "NIGHTSHIFT_DUCKDB_MEMORY_LIMIT=384MB" in str(caught.value)
    assert "rerun the night with a larger limit" in str(caught.value)
    other = _fx_node()
    with pytest.raises(DbtError) as caught:
        _raise_for_exit(DbtResult(args=["build"], returncode=1, nodes=[other]), [], 0)
    assert "NIGHTSHIFT_DUCKDB_MEMORY_LIMIT" not in str(caught.value)
