"""Shared fixtures: real PostgreSQL and MariaDB servers, fresh databases per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# `make test` runs the suite on several xdist workers (TEST_WORKERS): each worker gets its
# own dbt target folder (artifacts, partial-parse state, logs) and Airflow home, so two
# workers never write the same run_results.json or SQLite metadata database. A worker
# holds a lock on its slot for its lifetime: a second pytest session running at the same
# time (two terminals) takes the next free slot instead of sharing gw0's folders.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _claim_worker_slot(worker: str) -> tuple[str, object]:
    """The first `xdist-<worker>[-k]` slot no running session holds, and its held lock."""
    import fcntl
    import itertools

    for k in itertools.count():
        slot = f"xdist-{worker}" + (f"-{k}" if k else "")
        home = os.path.join(_ROOT, ".airflow", slot)
        os.makedirs(home, exist_ok=True)
        lock = open(os.path.join(home, ".slot.lock"), "w")  # noqa: SIM115 (held until exit)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return slot, lock
    raise AssertionError("unreachable")


if _WORKER:
    _SLOT, _SLOT_LOCK = _claim_worker_slot(_WORKER)
    os.environ["DBT_TARGET_PATH"] = os.path.join(_ROOT, "dbt_project", "target", _SLOT)
    os.environ["AIRFLOW_HOME"] = os.path.join(_ROOT, ".airflow", _SLOT)

from tests.servers import fresh_database, mariadb_server, postgres_server  # noqa: E402

# `make` exports `.env` (a compose or production set-up) to its recipes: the suite runs
# against its own servers and folders, so what `.env` set is dropped here (the Makefile
# lists the names in NIGHTSHIFT_DOTENV_NAMES; the test servers' NIGHTSHIFT_TEST_* stay).
for _name in os.environ.pop("NIGHTSHIFT_DOTENV_NAMES", "").split():
    if not _name.startswith("NIGHTSHIFT_TEST_"):
        os.environ.pop(_name, None)

# The fixtures that start (or reach) a database server: a test that uses one, even
# through other fixtures, is marked `server`; `make test-fast` leaves those out.
SERVER_FIXTURES = frozenset({"postgres_admin_url", "mariadb_admin_url"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


# Telemetry off for everything the tests start.
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("AIRFLOW__USAGE_DATA_COLLECTION__ENABLED", "false")


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """Admin URL of a real PostgreSQL server (running one, or a throwaway)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def mariadb_admin_url() -> Iterator[str]:
    """Admin URL of a real MariaDB server (running one, or a throwaway)."""
    with mariadb_server() as url:
        yield url


@pytest.fixture
def pg_database(postgres_admin_url: str) -> Iterator[str]:
    """SQLAlchemy URL (postgresql+psycopg://) of a fresh, empty database."""
    with fresh_database(postgres_admin_url) as url:
        yield url


@pytest.fixture
def mariadb_database(mariadb_admin_url: str) -> Iterator[str]:
    """SQLAlchemy URL (mysql+pymysql://) of a fresh, empty database."""
    with fresh_database(mariadb_admin_url) as url:
        yield url


@pytest.fixture
def pg_warehouse_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database as a PostgreSQL warehouse: the plain `postgresql://` URL a
    user puts in `AIRFLOW_CONN_WAREHOUSE`."""
    import sqlalchemy as sa

    with fresh_database(postgres_admin_url) as url:
        yield sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
