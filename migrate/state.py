"""Where the migration keeps its own state, and why there.

- Old database: the application's journal, `migration_repair_log` (dual writes that
  failed on the new side, and keys queued for repair) and `migration_shadow_diffs`.
  During phases 1-3 the old database is the system of record and has just accepted the
  user's write, so it is the one store certain to be up when the new one is not.
- New database, schema `ops`: backfill checkpoints (they must commit in the same
  transaction as the batch they describe), `ops.migration_quarantine` (old rows the
  mapping cannot convert, with the error naming table, row and field),
  `ops.migration_checks` (each verification)
  and `ops.migration_gates` (each gate decision). The new database is the one that
  survives the move; the DuckDB warehouse is not used (its single writer belongs to
  the nightly DAG).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

# ---------------------------------------------------------------- old database (journal)
journal = sa.MetaData()

repair_log = sa.Table(
    "migration_repair_log",
    journal,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("old_table", sa.String(255), nullable=False),
    sa.Column("row_key", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_migration_repair_log_pending", "replayed_at", "id"),
)

shadow_diffs = sa.Table(
    "migration_shadow_diffs",
    journal,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("table_name", sa.String(255), nullable=False),
    sa.Column("row_key", sa.BigInteger, nullable=False),
    sa.Column("columns", sa.Text, nullable=False),  # JSON list of differing old columns
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
)

# ---------------------------------------------------------------- new database (ops)
ops = sa.MetaData(schema="ops")

checkpoints = sa.Table(
    "migration_checkpoints",
    ops,
    sa.Column("table_name", sa.Text, primary_key=True),
    sa.Column("last_key", sa.BigInteger, nullable=True),
    sa.Column("rows_done", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

checks = sa.Table(
    "migration_checks",
    ops,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("phase", sa.Integer, nullable=False),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("rows_old", sa.BigInteger, nullable=False),
    sa.Column("rows_new", sa.BigInteger, nullable=False),
    sa.Column("rows_compared", sa.BigInteger, nullable=False),
    sa.Column("missing", sa.BigInteger, nullable=False),
    sa.Column("extra", sa.BigInteger, nullable=False),
    sa.Column("changed", sa.BigInteger, nullable=False),
    sa.Column("sample_keys", sa.Text, nullable=False),  # JSON
    sa.Column("clean", sa.Boolean, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_migration_checks_table", "table_name", "id"),
)

gates = sa.Table(
    "migration_gates",
    ops,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("phase", sa.Integer, nullable=False),
    sa.Column("allowed", sa.Boolean, nullable=False),
    sa.Column("failed_gate", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
)


quarantine = sa.Table(
    "migration_quarantine",
    ops,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("row_key", sa.BigInteger, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("old_row", sa.Text, nullable=False),  # JSON, values as text
    sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
)


def ensure_journal(old_engine: Engine) -> None:
    """Create the repair log and shadow-diff tables in the old database (idempotent)."""
    journal.create_all(old_engine)


def ensure_ops(new_engine: Engine) -> None:
    """Create schema `ops` and the migration state tables in the new database."""
    with new_engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS ops")
        ops.create_all(conn)
