"""The verifier finds every injected difference with its key and column, through the
mapping, on SQLite → PostgreSQL and PostgreSQL → PostgreSQL, and passes a clean pair."""

from __future__ import annotations

import pytest

from migrate.backfill import run_backfill
from migrate.db import make_engine
from migrate.mapping import MappingError, TableMapping
from migrate.verify import VerifyPlan, verify_table
from tests.migrate.conftest import count, execute, small_source

# Small buckets force several levels of bisection even on a small table.
DEEP = VerifyPlan(buckets=4, factor=4, leaf_rows=8)


@pytest.fixture
def copied(engines, mappings):
    old, new = engines
    run_backfill(old, new, mappings, list(mappings.values()), progress_bar=False)
    return old, new


def test_clean_pair_passes(copied, mappings) -> None:
    old, new = copied
    for mapping in mappings.values():
        result = verify_table(old, new, mapping)
        assert result.clean, result.summary()
        assert result.rows_old == result.rows_new == count(old, mapping.old_table) > 0
        assert (result.missing, result.extra, result.changed) == ([], [], [])


@pytest.mark.parametrize("plan", [VerifyPlan(), DEEP], ids=["default", "deep-bisection"])
def test_missing_extra_and_changed_rows_are_named(copied, mappings, plan) -> None:
    old, new = copied
    execute(new, "DELETE FROM orders WHERE id IN (5, 6)")
    execute(
        new,
        "INSERT INTO orders SELECT id + 1000000, customer_id, status, currency, total_cents, "
        "created_at, updated_at FROM orders WHERE id = 3",
    )
    execute(new, "UPDATE orders SET total_cents = total_cents + 1 WHERE id = 7")
    execute(old, "UPDATE orders SET status = 'refunded' WHERE id = 9")
    execute(
        new,
        "UPDATE orders SET currency = 'XXX', created_at = created_at + interval '1 microsecond' WHERE id = 11",
    )

    result = verify_table(old, new, mappings["orders"], plan)
    assert not result.clean
    assert result.missing == [5, 6]
    assert result.extra == [1000003]
    assert result.changed == [(7, ["total"]), (9, ["status"]), (11, ["currency", "created_at"])]
    assert (result.missing_count, result.extra_count, result.changed_count) == (2, 1, 3)
    assert result.rows_old == count(old, "orders") and result.rows_new == result.rows_old - 1


def test_split_and_renamed_columns_are_reported_by_old_name(copied, mappings) -> None:
    old, new = copied
    execute(new, "UPDATE customers SET name = 'Someone Else' WHERE id = 3")
    execute(new, "UPDATE customer_contacts SET email = 'x@example.com' WHERE customer_id = 4")
    execute(new, "UPDATE order_items SET unit_price_cents = 0 WHERE id = 10")

    customers = verify_table(old, new, mappings["customers"], DEEP)
    contacts = verify_table(old, new, mappings["customer_contacts"], DEEP)
    items = verify_table(old, new, mappings["order_items"], DEEP)
    assert customers.changed == [(3, ["full_name"])]
    assert contacts.changed == [(4, ["email"])]
    assert items.changed == [(10, ["unit_price"])]


def test_blank_region_equals_null_but_a_real_change_does_not(copied, mappings) -> None:
    old, new = copied
    execute(old, "UPDATE users SET region = ' \t ' WHERE id = 2")
    execute(new, "UPDATE customers SET region = NULL WHERE id = 2")
    assert verify_table(old, new, mappings["customers"]).clean
    execute(new, "UPDATE customers SET region = 'north' WHERE id = 2")
    assert verify_table(old, new, mappings["customers"]).changed == [(2, ["region"])]


def test_a_bucket_empty_on_one_side_lists_every_key(copied, mappings) -> None:
    old, new = copied
    execute(new, "DELETE FROM order_items WHERE id BETWEEN 101 AND 160")
    result = verify_table(old, new, mappings["order_items"], DEEP)
    assert result.missing == list(range(101, 161))
    assert result.extra == [] and result.changed == []


def test_postgres_to_postgres_identity(pg_database, second_pg_url) -> None:
    small_source(pg_database, seed=5)
    small_source(second_pg_url, seed=5)
    mapping = TableMapping.identity(
        "orders", ["id", "user_id", "status", "currency", "total", "created_at", "updated_at"]
    )
    old, new = make_engine(pg_database), make_engine(second_pg_url)
    try:
        assert verify_table(old, new, mapping).clean
        execute(new, "UPDATE orders SET total = total + 0.01 WHERE id = 42")
        execute(new, "DELETE FROM orders WHERE id = 17")
        execute(old, "DELETE FROM orders WHERE id = 18")
        for plan in (VerifyPlan(), DEEP, VerifyPlan(parallel=False)):
            result = verify_table(old, new, mapping, plan)
            assert (result.missing, result.extra, result.changed) == ([17], [18], [(42, ["total"])])
        # the work is in the databases: a handful of queries, not one per row
        assert verify_table(old, new, mapping).queries <= 10 < count(old, "orders") / 10
    finally:
        old.dispose()
        new.dispose()


def test_an_unknown_column_is_named(copied) -> None:
    old, new = copied
    bad = TableMapping.identity("orders", ["id", "status", "discount"])
    with pytest.raises(MappingError, match=r"table 'orders' .* has no column\(s\) discount"):
        verify_table(old, new, bad)


def test_the_plan_s_fields_may_be_given_as_keywords(copied, mappings) -> None:
    """Callers that pass the options one by one (`migrate.tasks.verify(**opts)`) get the
    same verification as with the plan; a plan and fields together are refused."""
    old, new = copied
    execute(new, "DELETE FROM orders WHERE id IN (5, 6)")
    execute(new, "UPDATE orders SET total_cents = total_cents + 1 WHERE id = 7")
    by_plan = verify_table(old, new, mappings["orders"], DEEP)
    by_keywords = verify_table(old, new, mappings["orders"], buckets=4, factor=4, leaf_rows=8)
    assert (
        by_keywords.queries == by_plan.queries > verify_table(old, new, mappings["orders"]).queries
    )
    assert (by_keywords.missing, by_keywords.changed) == ([5, 6], [(7, ["total"])])
    with pytest.raises(TypeError, match="not both"):
        verify_table(old, new, mappings["orders"], DEEP, parallel=False)
    with pytest.raises(TypeError, match="bucket"):
        verify_table(old, new, mappings["orders"], bucket=4)
