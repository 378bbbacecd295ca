"""The warehouse backends: `backend_for(...)` returns the `Warehouse` the settings name.

`AIRFLOW_CONN_WAREHOUSE` unset: DuckDB at `WAREHOUSE_PATH` (the default);
`postgresql://…` (or `postgres://`): PostgreSQL; `snowflake://…`: Snowflake
(`?emulator=fakesnow` for fakesnow's server). BigQuery is planned
(docs/warehouse-backends.md). The nightly runs on DuckDB, PostgreSQL and Snowflake.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from types import ModuleType
from typing import Any

from warehouse.backends.base import Warehouse, WarehouseError

__all__ = ["as_warehouse", "backend_for", "resolve"]


def as_warehouse(where: Any) -> Warehouse:
    """A `Warehouse` for a warehouse or a DuckDB file path (what callers passed before the
    interface: a path still means that DuckDB file, read and written in place)."""
    if isinstance(where, (str, PathLike)):
        from warehouse.backends.duckdb import DuckDBWarehouse

        return DuckDBWarehouse(Path(where))
    return where


def resolve(settings: ModuleType | None = None) -> tuple[str, str | None]:
    """(backend kind, warehouse URL or None for the DuckDB file), `DBT_TARGET` checked."""
    if settings is None:
        from core import settings as settings_module

        settings = settings_module
    kind = settings.warehouse_backend()
    return kind, settings.warehouse_url()


def backend_for(settings: ModuleType | None = None, **options: Any) -> Warehouse:
    """The configured warehouse (`core.settings` unless another settings module is
    given); `options` go to the backend's constructor."""
    if settings is None:
        from core import settings as settings_module

        settings = settings_module
    kind, url = resolve(settings)
    if kind == "duckdb":
        from warehouse.backends.duckdb import DuckDBWarehouse

        options.setdefault("memory_limit", settings.duckdb_memory_limit())
        return DuckDBWarehouse(settings.warehouse_path(), **options)
    if kind == "postgres":
        from warehouse.backends.postgres import PostgresWarehouse

        assert url is not None
        return PostgresWarehouse(url, **options)
    if kind == "snowflake":
        from warehouse.backends.snowflake import INSTALL_HINT

        try:
            import snowflake.connector  # noqa: F401
        except ImportError:
            raise WarehouseError(INSTALL_HINT) from None
        from warehouse.backends.snowflake import SnowflakeWarehouse

        assert url is not None
        return SnowflakeWarehouse(url, **options)
    raise WarehouseError(
        f"the {kind} warehouse backend is not implemented yet "
        "(docs/warehouse-backends.md has its plan)"
    )
