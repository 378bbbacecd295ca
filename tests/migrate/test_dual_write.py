"""The dual writer: old then new through the mapping; a failed write to new never fails
the request, lands in the repair log and is replayed; shadow reads record differences."""

from __future__ import annotations

import json
from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from demo.migration import fail_every
from migrate.backfill import run_backfill
from migrate.dual_write import DualWriter, pending_repairs, replay_repair_log
from migrate.state import repair_log, shadow_diffs
from migrate.verify import verify_table
from tests.migrate.conftest import SOURCE_END, count, execute

# After every generated row: the dual writes are the newest versions.
NOW = datetime.combine(SOURCE_END + timedelta(days=2), time(9, 30, 0, 250000))


@pytest.fixture
def copied(engines, mappings):
    old, new = engines
    run_backfill(old, new, mappings, list(mappings.values()), progress_bar=False)
    return old, new


def _new_order(tx, order_id: int, item_id: int) -> None:
    tx.insert(
        "orders",
        {
            "id": order_id,
            "user_id": 1,
            "status": "pending",
            "currency": "EUR",
            "total": Decimal("19.99"),
            "created_at": NOW,
            "updated_at": NOW,
        },
    )
    tx.insert(
        "order_items",
        {
            "id": item_id,
            "order_id": order_id,
            "product_id": 3,
            "quantity": 1,
            "unit_price": Decimal("19.99"),
            "updated_at": NOW,
        },
    )


def test_writes_reach_both_through_the_mapping(copied, mappings) -> None:
    old, new = copied
    writer = DualWriter(old, new, mappings)
    with writer.transaction() as tx:
        _new_order(tx, 900001, 900001)
        tx.update(
            "users", 2, {"full_name": "Renamed Person", "email": "r@example.com", "updated_at": NOW}
        )
    with new.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT total_cents FROM orders WHERE id = 900001")).scalar_one()
            == 1999
        )
        assert (
            conn.execute(sa.text("SELECT name FROM customers WHERE id = 2")).scalar_one()
            == "Renamed Person"
        )
        assert (
            conn.execute(
                sa.text("SELECT email FROM customer_contacts WHERE customer_id = 2")
            ).scalar_one()
            == "r@example.com"
        )
    assert writer.new_failures == 0 and pending_repairs(old) == 0
    for mapping in mappings.values():
        assert verify_table(old, new, mapping).clean, mapping.name


def test_failed_write_to_new_is_logged_found_and_replayed(copied, mappings) -> None:
    old, new_ok = copied
    broken = sa.create_engine(new_ok.url)
    fail_every(broken, 1)  # the new database refuses every write
    writer = DualWriter(old, broken, mappings)
    with writer.transaction() as tx:  # must not raise: the user's request succeeds
        _new_order(tx, 900002, 900002)
    with writer.transaction() as tx:
        tx.update("orders", 4, {"status": "cancelled", "updated_at": NOW})
    assert writer.new_failures == 2
    assert count(old, "orders") == count(new_ok, "orders") + 1
    with old.connect() as conn:
        logged = conn.execute(
            sa.select(repair_log.c.old_table, repair_log.c.row_key, repair_log.c.reason).order_by(
                repair_log.c.id
            )
        ).all()
    assert [(t, k) for t, k, _ in logged] == [
        ("orders", 900002),
        ("order_items", 900002),
        ("orders", 4),
    ]
    assert "injected" in logged[0].reason
    assert pending_repairs(old) == 3

    orders = verify_table(old, new_ok, mappings["orders"])
    assert orders.missing == [900002] and orders.changed == [(4, ["status", "updated_at"])]
    assert verify_table(old, new_ok, mappings["order_items"]).missing == [900002]

    assert replay_repair_log(old, new_ok, mappings) == 3
    assert pending_repairs(old) == 0
    assert replay_repair_log(old, new_ok, mappings) == 0  # replayed entries stay done
    for mapping in mappings.values():
        assert verify_table(old, new_ok, mapping).clean, mapping.name
    broken.dispose()


def test_replay_deletes_rows_the_old_side_no_longer_has(copied, mappings) -> None:
    old, new = copied
    broken = sa.create_engine(new.url)
    fail_every(broken, 1)
    with DualWriter(old, broken, mappings).transaction() as tx:
        tx.delete("order_items", 12)
    assert verify_table(old, new, mappings["order_items"]).extra == [12]
    replay_repair_log(old, new, mappings)
    assert verify_table(old, new, mappings["order_items"]).clean
    broken.dispose()


def test_a_failed_old_write_fails_the_request_and_touches_nothing(copied, mappings) -> None:
    old, new = copied
    writer = DualWriter(old, new, mappings)
    before = count(new, "orders")
    with pytest.raises(sa.exc.IntegrityError), writer.transaction() as tx:
        _new_order(tx, 1, 900003)  # order 1 exists: the old primary key refuses it
    assert count(new, "orders") == before and pending_repairs(old) == 0
    assert count(old, "order_items") == count(new, "order_items")


def test_shadow_read_returns_old_and_records_the_difference(copied, mappings) -> None:
    old, new = copied
    writer = DualWriter(old, new, mappings)
    execute(new, "UPDATE customers SET name = 'Wrong Name' WHERE id = 3")
    row = writer.shadow_read("users", 3)
    with old.connect() as conn:
        full_name = conn.execute(sa.text("SELECT full_name FROM users WHERE id = 3")).scalar_one()
        diffs = conn.execute(sa.select(shadow_diffs)).all()
    assert row["full_name"] == full_name != "Wrong Name"
    assert [(d.table_name, d.row_key, json.loads(d.columns)) for d in diffs] == [
        ("customers", 3, ["full_name"])
    ]
    assert json.loads(diffs[0].detail)["full_name"] == [full_name, "Wrong Name"]
    writer.shadow_read("users", 4)  # equal on both sides: nothing recorded
    assert count(old, "migration_shadow_diffs") == 1
