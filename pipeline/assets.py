"""The Airflow Assets the nightly publishes: one per table of the `analytics` schema.

`nightly_sales` emits them (task `announce_analytics`) only when its publish changed
what analysts see; `analytics_export` is scheduled on them. Light at import: DAG files
import it at parse time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset

from core.tables import ANALYTICS_TABLES


def analytics_asset(table: str) -> Asset:
    """`x-nightshift://warehouse/analytics/<table>`: an `x-` scheme, which Airflow takes
    as it is (no provider validates it), whatever backend holds the warehouse."""
    if table not in ANALYTICS_TABLES:
        raise ValueError(f"{table!r} is not a published table ({', '.join(ANALYTICS_TABLES)})")
    return Asset(name=f"analytics.{table}", uri=f"x-nightshift://warehouse/analytics/{table}")


ANALYTICS_ASSETS = tuple(analytics_asset(t) for t in ANALYTICS_TABLES)


def published_change(changed_tables: list[str], stats: Mapping[str, Any]) -> dict[str, Any]:
    """The `extra` of the asset events of a publish that changed `changed_tables`
    (warehouse.export.changed_analytics_tables): the run and the days it recomputed."""
    return {
        "run_id": str(stats.get("run_id")),
        "horizon": str(stats.get("horizon")),
        "changed_tables": [f"analytics.{t}" for t in changed_tables],
        "recomputed_days": list(stats.get("recomputed_days") or []),
    }
