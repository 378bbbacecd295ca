"""The test suite's real servers: see `demo.servers` (also used by `make migration-demo`)."""

from demo.servers import (
    DEFAULT_MYSQL_URL,
    DEFAULT_PG_URL,
    _find_pg_bin,
    free_port,
    fresh_database,
    mariadb_server,
    postgres_server,
)

__all__ = [
    "_find_pg_bin",
    "DEFAULT_MYSQL_URL",
    "DEFAULT_PG_URL",
    "fresh_database",
    "free_port",
    "mariadb_server",
    "postgres_server",
]
