"""Row filters with bound parameters, in the form each reader of the extract takes.

A row filter is SQL with `:name` placeholders plus a dict of values: SQLAlchemy's
`text()` form, what the cursor window and the shard predicate produce and what the
generic reader and the `aggregates` hook execute as bound parameters. PostgreSQL's COPY
takes no bind parameters, so the binary COPY reader has the driver render each value as
a quoted literal (`extract.pg_copy.render_where`), and that wants the driver's
`%(name)s` placeholders. `driver_filter` gets them from SQLAlchemy's own compiler (which
also escapes a literal `%`), so no SQL is rewritten by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import psycopg2

# pyformat placeholders (`%(name)s`) and no casts appended to them: the values are
# rendered by the driver as typed literals, and an appended `::INTEGER` would refuse a
# bigint key.
_PYFORMAT_DIALECT = psycopg2.dialect()


def bound_filter(where_sql: str, params: Mapping[str, Any]) -> sa.TextClause:
    """The filter as a SQLAlchemy clause with its values bound."""
    return sa.text(where_sql).bindparams(**params)


def driver_filter(where_sql: str | None, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The filter in psycopg's `%(name)s` form with its values: ("", {}) for no filter."""
    if not where_sql:
        return "", {}
    compiled = bound_filter(where_sql, params).compile(dialect=_PYFORMAT_DIALECT)
    return str(compiled), dict(compiled.params)
