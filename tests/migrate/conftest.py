"""Fixtures of the migration tests: a small demo source (SQLite or PostgreSQL) as the
old database and an empty new PostgreSQL database with the new schema."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from demo.generator import generate
from migrate.db import apply_new_schema, make_engine
from migrate.mapping import TableMapping, load_mappings
from migrate.state import ensure_journal, ensure_ops
from tests.servers import fresh_database

# The last day of the small source: tests derive their timestamps from it, never from
# the wall clock (they pass whatever today's date is).
SOURCE_END = date(2026, 11, 26)


def small_source(url: str, seed: int = 3) -> None:
    """5 days x 40 orders of demo data ending on SOURCE_END (~200 orders, ~500 items)."""
    generate(url, seed=seed, days=5, end_date=SOURCE_END, orders_per_day=40, if_exists="replace")


@pytest.fixture
def mappings() -> dict[str, TableMapping]:
    return load_mappings()


@pytest.fixture
def old_sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    small_source(url)
    return url


@pytest.fixture
def new_pg_url(pg_database: str) -> str:
    engine = make_engine(pg_database)
    apply_new_schema(engine)
    ensure_ops(engine)
    engine.dispose()
    return pg_database


@pytest.fixture
def second_pg_url(postgres_admin_url: str) -> Iterator[str]:
    """Another fresh PostgreSQL database (for PostgreSQL → PostgreSQL cases)."""
    with fresh_database(postgres_admin_url, prefix="nightshift_migrate") as url:
        yield url


@pytest.fixture
def engines(old_sqlite_url: str, new_pg_url: str) -> Iterator[tuple[Engine, Engine]]:
    old, new = make_engine(old_sqlite_url), make_engine(new_pg_url)
    ensure_journal(old)
    yield old, new
    old.dispose()
    new.dispose()


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one()


def execute(engine: Engine, sql: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)
