"""The resharding tools on real SQLite databases: the copy is a repeatable upsert where
the newest `updated_at` wins, the delete removes exactly the moved vshards, and the next
map moves them and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from extract.shards import ShardMap, ShardMapError, vshard_of
from migrate.resharding import CopyPlan, copy_vshards, delete_vshards, move_vshards

MOVED = (0, 9)  # vshards 0..9 of 16: keys whose key % 16 < 10
DDL = "create table orders (id integer primary key, status text, updated_at timestamp)"


def _db(tmp_path: Path, name: str, rows: list[tuple[int, str, str]]) -> str:
    url = f"sqlite:///{tmp_path / name}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(DDL))
        for row in rows:
            conn.execute(sa.text("insert into orders values (:i, :s, :t)"),
                         {"i": row[0], "s": row[1], "t": row[2]})  # fmt: skip
    engine.dispose()
    return url


def _rows(url: str) -> dict[int, tuple[str, str]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select id, status, updated_at from orders")).all()
    engine.dispose()
    return {r[0]: (r[1], str(r[2])[:19]) for r in rows}  # seconds: the stored text varies


def test_copy_is_repeatable_newest_wins_and_delete_takes_only_the_moved_vshards(
    tmp_path: Path,
) -> None:
    old = _db(tmp_path, "a.db", [(i, "new", "2026-11-20 10:00:00") for i in range(40)])
    # the new database already holds a newer version of key 1 and an older one of key 2
    new = _db(tmp_path, "b.db", [(1, "paid", "2026-11-21 10:00:00"), (2, "x", "2026-11-01")])
    moved = {i for i in range(40) if MOVED[0] <= vshard_of(i, 16) <= MOVED[1]}
    plan = CopyPlan(virtual_shards=16)  # the same for every repeat of the copy
    assert copy_vshards(old, new, "orders", [MOVED], plan) == len(moved)
    assert copy_vshards(old, new, "orders", [MOVED], plan) == len(moved)
    copied = _rows(new)
    assert set(copied) == moved  # nothing outside the vshards, nothing twice
    assert copied[1] == ("paid", "2026-11-21 10:00:00")  # newer in the new database: kept
    assert copied[2] == ("new", "2026-11-20 10:00:00")  # older: replaced
    assert delete_vshards(old, "orders", [MOVED], virtual_shards=16) == len(moved)
    assert set(_rows(old)) == set(range(40)) - moved


def test_the_copy_plan_s_fields_may_be_given_as_keywords(tmp_path: Path) -> None:
    """Callers that pass the options one by one get the plan of those fields; a plan and
    fields together, or a name that is no field, are refused before anything is sent."""
    old = _db(tmp_path, "a.db", [(i, "new", "2026-11-20 10:00:00") for i in range(40)])
    new = _db(tmp_path, "b.db", [])
    moved = {i for i in range(40) if MOVED[0] <= vshard_of(i, 16) <= MOVED[1]}
    sent = copy_vshards(old, new, "orders", [MOVED], virtual_shards=16, batch_size=3)
    assert sent == len(moved) and set(_rows(new)) == moved
    with pytest.raises(TypeError, match="not both"):
        copy_vshards(old, new, "orders", [MOVED], CopyPlan(), virtual_shards=16)
    with pytest.raises(TypeError, match="vshards"):
        copy_vshards(old, new, "orders", [(10, 15)], vshards=16)
    assert set(_rows(new)) == moved


def test_the_next_map_moves_the_vshards_and_nothing_else() -> None:
    v1 = ShardMap.from_dict(
        {"virtual_shards": 16, "version": 1,
         "shards": [{"name": "a", "url": "sqlite://", "vshards": [[0, 15]]}]}
    )  # fmt: skip
    v2 = move_vshards(v1, *MOVED, "b", url="sqlite:///b.db")
    assert v2.version == 2
    assert v2.vshards_of("a") == ((10, 15),) and v2.vshards_of("b") == (MOVED,)
    v3 = move_vshards(v2, 5, 9, "a")
    assert v3.vshards_of("a") == ((5, 15),) and v3.vshards_of("b") == ((0, 4),)
    with pytest.raises(ShardMapError, match="already exists"):
        move_vshards(v3, 0, 1, "a", url="sqlite://")
