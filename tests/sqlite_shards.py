"""A generated SQLite source split across two databases behind a vshard map (tests)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import sqlalchemy as sa

from demo import schema
from demo.generator import generate
from extract.shards import ShardMap
from migrate.resharding import copy_vshards, delete_vshards

TABLES = ("users", "products", "orders", "order_items")


def split_sqlite_source(
    tmp_path: Path, *, seed: int, days: int, end_date: date, orders_per_day: int
) -> tuple[str, str, ShardMap]:
    """(url of a, url of b, map): the generator's rows of vshards 64-1023 moved to b."""
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    generate(
        a, seed=seed, days=days, end_date=end_date, orders_per_day=orders_per_day,
        if_exists="replace",
    )  # fmt: skip
    engine = sa.create_engine(b)
    schema.metadata.create_all(engine)
    engine.dispose()
    for table in TABLES:
        copy_vshards(a, b, table, [(64, 1023)])
        delete_vshards(a, table, [(64, 1023)])
    shard_map = ShardMap.from_dict(
        {
            "version": 1,
            "shards": [
                {"name": "a", "url": a, "vshards": [[0, 63]]},
                {"name": "b", "url": b, "vshards": [[64, 1023]]},
            ],
        }
    )
    return a, b, shard_map
