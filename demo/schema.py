"""SQLAlchemy Core schema of the demo operational database (docs/contract.md, "Sources").

Portable across SQLite, PostgreSQL (psycopg 3) and MySQL/MariaDB (PyMySQL):
explicit BIGINT ids (the generator assigns them), `String(255)` text so MySQL can
index it, timestamps as timestamptz on PostgreSQL and DATETIME(6) on MySQL/MariaDB
(holding UTC; SQLite stores naive UTC text). No foreign keys on purpose: the source
holds order items whose product does not exist.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
)
from sqlalchemy.dialects import mysql, sqlite

# BIGINT primary keys; on SQLite a BIGINT PK is not a rowid alias, so map it to INTEGER
# there (same storage, faster lookups). Ids are always given explicitly.
Id = BigInteger().with_variant(sqlite.INTEGER(), "sqlite")
# Microsecond precision: MySQL/MariaDB DATETIME defaults to whole seconds.
Timestamp = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Money = Numeric(12, 2)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=False),
    Column("email", String(255), nullable=False),
    Column("full_name", String(255), nullable=False),
    Column("region", String(255), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index("ix_users_updated_at", "updated_at"),
)

products = Table(
    "products",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=False),
    Column("sku", String(255), nullable=False),
    Column("name", String(255), nullable=False),
    Column("category", String(255), nullable=True),
    Column("price", Money, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index("ix_products_updated_at", "updated_at"),
)

orders = Table(
    "orders",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=False),
    Column("user_id", BigInteger, nullable=False),
    Column("status", String(255), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("total", Money, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index("ix_orders_updated_at", "updated_at"),
)

order_items = Table(
    "order_items",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=False),
    Column("order_id", BigInteger, nullable=False),
    Column("product_id", BigInteger, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", Money, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index("ix_order_items_updated_at", "updated_at"),
    Index("ix_order_items_order_id", "order_id"),
)

#: Tables in dependency-free insertion order.
TABLES: tuple[Table, ...] = (users, products, orders, order_items)
TABLE_NAMES: tuple[str, ...] = tuple(t.name for t in TABLES)

ORDER_STATUSES: tuple[str, ...] = (
    "pending",
    "paid",
    "shipped",
    "delivered",
    "cancelled",
    "refunded",
)

#: DDL of the payments store served by the demo API (stdlib sqlite3 file).
PAYMENTS_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS payments (
    id TEXT PRIMARY KEY,
    order_id INTEGER NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    method TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS ix_payments_updated_at_id ON payments (updated_at, id)",
)
