"""The one declaration of the source tables (core/tables.py) against every place that
must agree with it: the quality suites' keys, the API's landed schemas, the demo source,
the extract defaults, the loader and the contract."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from core import tables

ROOT = Path(__file__).resolve().parents[2]


def test_sources_keys_and_lookups() -> None:
    assert tables.SOURCES == {
        "source_db": ("users", "products", "orders", "order_items"),
        "payments_api": ("payments", "fx_rates"),
    }
    assert tables.KEYS["fx_rates"] == ("rate_date", "currency")
    assert tables.table("order_items").hard_deletes
    assert tables.table("fx_rates").cursor is None
    assert tables.table("orders").qualified == "source_db.orders"
    with pytest.raises(KeyError, match="unknown source table 'order'.*order_items"):
        tables.table("order")
    with pytest.raises(KeyError, match="unknown source 'api'.*payments_api"):
        tables.of_source("api")


@pytest.mark.parametrize("t", tables.SOURCE_TABLES, ids=lambda t: t.qualified)
def test_each_quality_suite_names_the_table_and_its_key(t: tables.SourceTable) -> None:
    suite = json.loads((ROOT / "gx" / "expectations" / t.source / f"{t.name}.json").read_text())
    assert suite["meta"]["table"] == t.qualified
    assert tuple(suite["meta"]["key_columns"]) == t.key


def test_the_api_lands_the_declared_columns() -> None:
    from extract import api_extract

    assert api_extract.SOURCE == tables.PAYMENTS_API
    assert (api_extract.PAYMENTS_TABLE, api_extract.FX_TABLE) == tables.SOURCES["payments_api"]
    assert tuple(api_extract.PAYMENTS_SCHEMA.names) == tables.table("payments").required
    assert tuple(api_extract.FX_SCHEMA.names) == tables.table("fx_rates").required


def test_the_demo_source_has_every_table_key_and_column(tmp_path: Path) -> None:
    """The demo's schema created on a real SQLite file, then read back."""
    from demo import schema

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'source.db'}")
    schema.metadata.create_all(engine)
    inspector = sa.inspect(engine)
    assert set(tables.SOURCES["source_db"]) <= set(inspector.get_table_names())
    for t in tables.of_source("source_db"):
        columns = {c["name"] for c in inspector.get_columns(t.name)}
        assert set(t.required) <= columns, t.name
        assert tuple(inspector.get_pk_constraint(t.name)["constrained_columns"]) == t.key
    engine.dispose()


def test_the_extract_defaults_and_the_loader_come_from_here() -> None:
    from extract.tables import DEFAULT_TABLES
    from warehouse.load import DEFAULT_KEYS, KNOWN_TABLES

    assert [
        (c.name, (c.key,), c.cursor, c.reconcile_deletes, c.required_columns)
        for c in DEFAULT_TABLES
    ] == [
        (t.name, t.key, t.cursor, t.hard_deletes, t.required) for t in tables.of_source("source_db")
    ]
    assert KNOWN_TABLES == tables.SOURCES
    assert DEFAULT_KEYS == tables.KEYS


def test_the_contract_lists_every_required_column() -> None:
    """docs/contract.md, "Sources" promises the columns read; the pipeline needs no other."""
    text = (ROOT / "docs" / "contract.md").read_text()
    for t in tables.of_source("source_db"):
        row = re.search(rf"^\| `{t.name}` \| (.+) \|$", text, re.M)
        assert row, f"contract has no row for {t.name}"
        promised = set(re.findall(r"`([a-z_]+)`", row.group(1)))
        assert set(t.required) <= promised, t.name
