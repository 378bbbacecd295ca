"""The source tables the pipeline reads and the tables it publishes, declared once.

Each source table has its key (what a row is identified and merged by), its cursor
(the column incremental extracts follow; None: the table is read by day), whether the
source hard-deletes rows (the extract then lands the key set so the load can remove
them) and the columns the pipeline needs (docs/contract.md, "Sources"). The extract defaults,
the loader, the nightly's table lists and the published assets take them from here;
tests/core/test_tables.py checks the quality suites, the API schemas and the demo
source against them.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE_DB = "source_db"
PAYMENTS_API = "payments_api"
CURSOR = "updated_at"


@dataclass(frozen=True)
class SourceTable:
    """One landed source table."""

    source: str
    name: str
    key: tuple[str, ...]
    cursor: str | None
    required: tuple[str, ...]
    hard_deletes: bool = False

    @property
    def qualified(self) -> str:
        """`<source>.<table>`, as the quality suites and messages name it."""
        return f"{self.source}.{self.name}"


SOURCE_TABLES: tuple[SourceTable, ...] = (
    SourceTable(SOURCE_DB, "users", ("id",), CURSOR, ("id", "region", "updated_at")),
    SourceTable(SOURCE_DB, "products", ("id",), CURSOR, ("id", "category", "updated_at")),
    SourceTable(
        SOURCE_DB,
        "orders",
        ("id",),
        CURSOR,
        ("id", "user_id", "status", "currency", "total", "created_at", "updated_at"),
    ),
    SourceTable(
        SOURCE_DB,
        "order_items",
        ("id",),
        CURSOR,
        ("id", "order_id", "product_id", "quantity", "unit_price", "updated_at"),
        hard_deletes=True,
    ),
    SourceTable(
        PAYMENTS_API,
        "payments",
        ("id",),
        CURSOR,
        ("id", "order_id", "amount", "currency", "status", "method", "created_at", "updated_at"),
    ),
    SourceTable(
        PAYMENTS_API,
        "fx_rates",
        ("rate_date", "currency"),
        None,
        ("rate_date", "base", "currency", "rate"),
    ),
)

#: source -> its tables, in extract order
SOURCES: dict[str, tuple[str, ...]] = {
    source: tuple(t.name for t in SOURCE_TABLES if t.source == source)
    for source in (SOURCE_DB, PAYMENTS_API)
}

#: table -> its key columns (table names are unique across sources)
KEYS: dict[str, tuple[str, ...]] = {t.name: t.key for t in SOURCE_TABLES}

#: The published tables of docs/contract.md ("What it publishes"), in the order they are exported.
ANALYTICS_TABLES: tuple[str, ...] = ("sales_summary", "daily_sales")


def of_source(source: str) -> tuple[SourceTable, ...]:
    """The tables of `source`; KeyError names the known sources."""
    if source not in SOURCES:
        raise KeyError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    return tuple(t for t in SOURCE_TABLES if t.source == source)


def table(name: str) -> SourceTable:
    """The source table `name`; KeyError names the known tables."""
    for t in SOURCE_TABLES:
        if t.name == name:
            return t
    raise KeyError(f"unknown source table {name!r}; known: {', '.join(KEYS)}")
