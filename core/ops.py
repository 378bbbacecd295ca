"""The `ops` schema: the pipeline's own bookkeeping tables, declared once.

Every package that writes to `ops` creates what it needs from here (`create_sql`), so a
table has one definition whichever step creates it first. The DDL uses the warehouse
Session's `{ops}` placeholder (the build's or the published schema); `schema="ops"`
gives plain SQL for a bare DuckDB connection on a warehouse file.
"""

from __future__ import annotations

from typing import Any

SCHEMA = "ops"
PLACEHOLDER = "{ops}"

# Columns of each table. `<json>` is DuckDB `json` and `text` elsewhere (Python writes
# an unmeasured lag as `Infinity`, which PostgreSQL's `json` refuses); `json` is json on
# every engine.
TABLES: dict[str, str] = {
    "pipeline_runs": """
    run_id varchar not null,
    business_date date not null,
    started_at timestamptz,
    published_at timestamptz not null,
    duration_s double precision,
    freshness_lag_s double precision,
    quality_checks bigint,
    quality_pass_rate double precision,
    restated_days bigint,
    rows_extracted <json>,
    rows_quarantined <json>,
    rows_loaded <json>,
    rows_published <json>,
    metrics <json> not null""",
    "task_metrics": """
    run_id varchar not null,
    task varchar not null,
    status varchar not null,
    started_at timestamptz,
    finished_at timestamptz,
    seconds double precision,
    summary <json>""",
    "deleted_rows": """
    run_id varchar not null,
    table_name varchar not null,
    key varchar not null,
    deleted_at timestamptz not null""",
    "restated_days": """
    run_id varchar not null,
    business_date date not null,
    reason varchar not null""",
    "restated_orders": """
    run_id varchar not null,
    order_id bigint not null,
    business_date date not null""",
    "loaded_runs": """
    source varchar not null,
    table_name varchar not null,
    shard varchar not null default '',
    run_id varchar not null,
    mode varchar not null,
    window_start timestamptz,
    window_end timestamptz,
    cursor_key varchar,
    rows bigint not null,
    manifest json,
    loaded_at timestamptz not null default now()""",
    "quality_results": """
    run_id varchar not null,
    suite varchar not null,
    expectation varchar not null,
    column_name varchar,
    severity varchar not null,
    success boolean not null,
    observed_value varchar,
    details varchar,
    checked_at timestamptz not null""",
    "guard_overrides": """
    run_id varchar not null,
    guard varchar not null,
    table_name varchar not null,
    details json not null,
    decided_at timestamptz not null""",
}


def create_sql(*tables: str, kind: str = "duckdb", schema: str = PLACEHOLDER) -> str:
    """`create schema` and `create table if not exists` for `tables` (all when none are
    named), for engine `kind`; KeyError names an unknown table."""
    names = tables or tuple(TABLES)
    unknown = [t for t in names if t not in TABLES]
    if unknown:
        raise KeyError(f"no ops table {unknown}: known are {sorted(TABLES)}")
    json_type = "json" if kind == "duckdb" else "text"
    parts = [f"create schema if not exists {schema};"]
    for name in names:
        columns = TABLES[name].replace("<json>", json_type)
        parts.append(f"create table if not exists {schema}.{name} ({columns}\n);")
    return "\n".join(parts) + "\n"


def create(session: Any, *tables: str) -> None:
    """Create the `ops` schema and `tables` through a warehouse Session (its `kind` and
    `{ops}` schema), in the caller's transaction; idempotent."""
    session.execute(create_sql(*tables, kind=session.kind))
