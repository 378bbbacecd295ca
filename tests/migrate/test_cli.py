"""`python -m migrate`: schema, backfill, verify (--repair) and gate on a PostgreSQL
old side (the production case) and the new PostgreSQL schema."""

from __future__ import annotations

import sqlalchemy as sa

from migrate.__main__ import main
from migrate.db import make_engine
from migrate.state import repair_log
from tests.migrate.conftest import count, execute, small_source


def test_cli_round_trip_on_postgres(pg_database, second_pg_url, capsys) -> None:
    small_source(pg_database, seed=11)
    urls = ["--old", pg_database, "--new", second_pg_url]
    assert main([*urls, "schema"]) == 0
    assert main([*urls, "backfill", "--batch-size", "100", "--no-progress"]) == 0
    assert main([*urls, "verify", "--run-id", "cli-1"]) == 0
    old, new = make_engine(pg_database), make_engine(second_pg_url)
    try:
        assert count(new, "customer_contacts") == count(old, "users") > 0
        execute(new, "DELETE FROM order_items WHERE id = 33")
        execute(new, "UPDATE products SET price_cents = price_cents + 100 WHERE id = 2")
        capsys.readouterr()

        assert main([*urls, "--tables", "order_items,products", "verify", "--repair"]) == 1
        out = capsys.readouterr().out
        assert "order_items: DIFFERENT" in out and "'missing': [33]" in out
        assert "products: DIFFERENT" in out and "[2, ['price']]" in out
        with old.connect() as conn:
            queued = conn.execute(sa.select(repair_log.c.old_table, repair_log.c.row_key)).all()
        assert sorted(queued) == [("order_items", 33), ("products", 2)]

        assert main([*urls, "gate", "--phase", "4", "--required-clean-runs", "1"]) == 1
        assert "NO-GO: gate 'clean_runs' failed" in capsys.readouterr().out
        assert main([*urls, "backfill", "--no-progress"]) == 0  # replays the two entries
        assert "repair log: 2 entries replayed" in capsys.readouterr().out
        assert main([*urls, "verify"]) == 0
        assert main([*urls, "gate", "--phase", "4", "--required-clean-runs", "1"]) == 0
        assert "phase 4 (stop writing old): GO" in capsys.readouterr().out
        assert main([*urls, "--tables", "nope", "verify"]) == 2
        assert "unknown table(s) nope" in capsys.readouterr().err
    finally:
        old.dispose()
        new.dispose()
