"""Zero-downtime database move: dual writes, backfill, verification and cutover gates.

Modules: `mapping` (old → new columns, from `config/migration.yml`), `dual_write` (the
application side: write old, then new; repair log; shadow reads), `backfill` (history
old → new, resumable), `verify` (counts and bucket checksums pushed into each database,
bisection down to rows), `checks` (`ops.migration_checks` and the phase gates).
"""
