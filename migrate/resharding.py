"""Resharding a sharded source: move virtual shards from one database to another.

The three steps of docs/sharding.md: copy the rows of the moved vshards into their new
database (`copy_vshards`, repeatable until caught up), publish the next map version that
assigns them there (`move_vshards`), and later delete the rows that linger in the old
database (`delete_vshards`). These write to and delete from the source databases, so
they live with the migration tools, not in the extract, which only reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from core.settings import sqlalchemy_url
from extract.shards import (
    DEFAULT_VIRTUAL_SHARDS,
    PhysicalShard,
    ShardMap,
    ShardMapError,
    normalize_ranges,
    shard_filter,
    subtract_ranges,
)
from migrate.db import plan_or_fields


def move_vshards(
    shard_map: ShardMap,
    lo: int,
    hi: int,
    to: str,
    *,
    url: str | None = None,
    conn_id: str | None = None,
) -> ShardMap:
    """The next map version with vshards [lo, hi] moved to shard `to` (step 2 of a
    reshard). `to` may be an existing shard or a new one (then give `url`/`conn_id`)."""
    moved = ((lo, hi),)
    names = [s.name for s in shard_map.shards]
    shards = []
    for s in shard_map.shards:
        if s.name == to:
            if url or conn_id:
                raise ShardMapError(f"shard {to!r} already exists: do not give url/conn_id")
            shards.append(replace(s, vshards=normalize_ranges(s.vshards + moved)))
        else:
            shards.append(replace(s, vshards=subtract_ranges(s.vshards, moved)))
    if to not in names:
        shards.append(PhysicalShard(to, moved, url, conn_id))
    return ShardMap(shard_map.virtual_shards, shard_map.version + 1, tuple(shards))


@dataclass(frozen=True)
class CopyPlan:
    """How `copy_vshards` copies a table, the same for each repeat until the destination
    has caught up: rows keyed by `key_column` (its vshard among `virtual_shards`), the
    newest `cursor_column` wins, `batch_size` rows per transaction, `pause_seconds`
    between batches (spares the source)."""

    key_column: str = "id"
    cursor_column: str = "updated_at"
    virtual_shards: int = DEFAULT_VIRTUAL_SHARDS
    batch_size: int = 5000
    pause_seconds: float = 0.0


def copy_vshards(
    src_url: str,
    dst_url: str,
    table: str,
    ranges: Iterable[Sequence[int]],
    plan: CopyPlan | None = None,
    **options: Any,
) -> int:
    """Step 1 (and its catch-up): upsert the rows of `ranges` from `src` into `dst`,
    newest `plan.cursor_column` wins, so it can be repeated until `dst` has caught up.
    `plan` (default `CopyPlan()`), or its fields as keyword `options`, not both.
    PostgreSQL and SQLite destinations. Returns the number of rows sent.
    """
    plan = plan_or_fields(CopyPlan, plan, options, "copy_vshards")
    key_column, cursor_column, batch_size = plan.key_column, plan.cursor_column, plan.batch_size
    src = sa.create_engine(sqlalchemy_url(src_url), poolclass=sa.pool.NullPool)
    dst = sa.create_engine(sqlalchemy_url(dst_url), poolclass=sa.pool.NullPool)
    if dst.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dst.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"copy_vshards: no upsert for {dst.dialect.name}")
    sent = 0
    try:
        with src.connect() as sconn, dst.connect() as dconn:
            s_table = sa.Table(table, sa.MetaData(), autoload_with=sconn)
            d_table = sa.Table(table, sa.MetaData(), autoload_with=dconn)
            dconn.commit()  # end the reflection's implicit transaction
            stmt = (
                sa.select(s_table)
                .where(shard_filter(s_table.c[key_column], ranges, plan.virtual_shards))
                .order_by(s_table.c[key_column])
            )
            result = sconn.execution_options(stream_results=True, yield_per=batch_size).execute(
                stmt
            )
            for rows in result.partitions(batch_size):
                values = [dict(r._mapping) for r in rows]
                ins = insert(d_table).values(values)
                upsert = ins.on_conflict_do_update(
                    index_elements=[d_table.c[key_column]],
                    set_={c.name: ins.excluded[c.name] for c in d_table.columns},
                    where=ins.excluded[cursor_column] > d_table.c[cursor_column],
                )
                dconn.execute(upsert)
                dconn.commit()  # batch by batch: the copy may be long and is repeatable
                sent += len(values)
                if plan.pause_seconds:
                    time.sleep(plan.pause_seconds)
    finally:
        src.dispose()
        dst.dispose()
    return sent


def delete_vshards(
    url: str,
    table: str,
    ranges: Iterable[Sequence[int]],
    *,
    key_column: str = "id",
    virtual_shards: int = DEFAULT_VIRTUAL_SHARDS,
) -> int:
    """Step 3: delete the rows of `ranges` that linger in their old database. Only once
    every extract that could still use the previous map has been loaded (docs)."""
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            t = sa.Table(table, sa.MetaData(), autoload_with=conn)
            res = conn.execute(
                sa.delete(t).where(shard_filter(t.c[key_column], ranges, virtual_shards))
            )
            return res.rowcount
    finally:
        engine.dispose()
