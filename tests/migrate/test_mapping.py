"""The mapping file: the demo's schema change (rename, cents, split table, blank → NULL)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from migrate.mapping import (
    ColumnMap,
    MappingError,
    TableMapping,
    load_mappings,
    mappings_of_old_table,
    parse_mappings,
)

NOW = datetime(2026, 11, 27, 13, 45, 1, 123456)


def test_config_describes_the_new_schema() -> None:
    mappings = load_mappings()
    assert list(mappings) == ["customers", "customer_contacts", "products", "orders", "order_items"]
    split = mappings_of_old_table(mappings, "users")
    assert [m.new_table for m in split] == ["customers", "customer_contacts"]
    assert mappings["customer_contacts"].new_key == "customer_id"
    assert all(m.version == "updated_at" for m in mappings.values())


def test_user_row_is_split_renamed_and_blank_region_is_null() -> None:
    mappings = load_mappings()
    user = {
        "id": 7,
        "email": "ada@example.com",
        "full_name": "Ada Adams",
        "region": " \t",
        "created_at": NOW,
        "updated_at": NOW,
    }
    assert mappings["customers"].to_new(user) == {
        "id": 7,
        "name": "Ada Adams",
        "region": None,
        "created_at": NOW.replace(tzinfo=UTC),
        "updated_at": NOW.replace(tzinfo=UTC),
    }
    assert mappings["customer_contacts"].to_new(user) == {
        "customer_id": 7,
        "email": "ada@example.com",
        "updated_at": NOW.replace(tzinfo=UTC),
    }
    assert mappings["customers"].to_new({**user, "region": "north"})["region"] == "north"


@pytest.mark.parametrize(
    ("total", "cents"),
    [(Decimal("12.34"), 1234), (12.3, 1230), ("0.00", 0), (Decimal("1500"), 150000)],
)
def test_money_becomes_exact_cents(total: object, cents: int) -> None:
    order = {
        "id": 1,
        "user_id": 2,
        "status": "paid",
        "currency": "EUR",
        "total": total,
        "created_at": NOW,
        "updated_at": NOW,
    }
    row = load_mappings()["orders"].to_new(order)
    assert row["total_cents"] == cents and row["customer_id"] == 2


def test_a_value_that_does_not_fit_names_table_row_and_field() -> None:
    mapping = load_mappings()["order_items"]
    item = {
        "id": 99,
        "order_id": 1,
        "product_id": 1,
        "quantity": 1,
        "unit_price": Decimal("1.005"),
        "updated_at": NOW,
    }
    with pytest.raises(MappingError, match=r"order_items id=99 field unit_price.*2 decimals"):
        mapping.to_new(item)


def test_identity_mapping_and_bad_files() -> None:
    ident = TableMapping.identity("orders", ["id", "status", "total"])
    assert ident.columns == (ColumnMap("status", "status"), ColumnMap("total", "total"))
    assert ident.old_key == ident.new_key == "id"
    with pytest.raises(MappingError, match="kind 'euros' is not one of same, cents, text"):
        parse_mappings(
            {"tables": {"t": {"old_table": "t", "columns": [{"old": "a", "kind": "euros"}]}}}
        )
    with pytest.raises(MappingError, match="missing columns"):
        parse_mappings({"tables": {"t": {"old_table": "t"}}})
    with pytest.raises(MappingError, match="version column 'updated_at' is not mapped"):
        parse_mappings(
            {"tables": {"t": {"old_table": "t", "version": "updated_at", "columns": ["a"]}}}
        )
