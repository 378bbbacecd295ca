"""Real servers for the demos and the tests.

The demo's own sources: the SQLite files under `<data dir>/demo` and the payments API
(`running_api`, a `demo.api` process on loopback), and `demo_connections`, which points a
run at them when no connection is configured.

Database servers: the running one, else a throwaway started here. The URLs are
overridable (`NIGHTSHIFT_TEST_PG_URL`, `NIGHTSHIFT_TEST_MYSQL_URL`,
`NIGHTSHIFT_TEST_REDIS_URL`). When nothing answers there, a private server is started in
a temp dir on a free loopback port (`initdb`/`pg_ctl`, `mariadb-install-db`/`mariadbd`,
`redis-server`) and stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import sqlalchemy as sa

from core import settings
from demo.api import ADMIN_TOKEN_ENV, FAULT_INJECTION_ENV, TOKEN_ENV

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/mysql"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEMO_TOKEN = "demo-token"  # the demo API's default bearer token (DEMO_API_TOKEN)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_paths(data_dir: Path) -> dict[str, Path]:
    """The demo's source files under `data_dir`: the SQLite source and the API's payments."""
    demo = Path(data_dir) / "demo"
    return {"dir": demo, "source": demo / "source.db", "payments": demo / "payments.db"}


@contextlib.contextmanager
def running_api(
    payments_db: Path,
    *,
    token: str = DEMO_TOKEN,
    port: int | None = None,
    faults: str = "",
    fault_every: int = 3,
    admin_token: str | None = None,
) -> Iterator[str]:
    """Start the demo payments API on loopback; yield its connection URI; stop it after.

    The tokens reach the server in its environment, not on its command line (`ps`).
    `admin_token` enables the fault-injection endpoint (`/_admin/faults`) behind it.
    """
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "demo.api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--payments-db",
        str(payments_db),
    ]
    if faults:
        cmd += ["--faults", faults, "--fault-every", str(fault_every)]
    env = {**os.environ, TOKEN_ENV: token}
    env.pop(FAULT_INJECTION_ENV, None)
    env.pop(ADMIN_TOKEN_ENV, None)
    if admin_token is not None:
        env.update({FAULT_INJECTION_ENV: "1", ADMIN_TOKEN_ENV: admin_token})
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        _wait_for_api(proc, port)
        yield f"http://:{token}@127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_for_api(proc: subprocess.Popen, port: int, timeout_s: float = 30) -> None:
    """Until the API answers `/healthz`; an API that exits or stays silent is an error."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"demo API exited at start (port {port}): {err[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"demo API did not answer on 127.0.0.1:{port} within {timeout_s:g} s"
            )
        time.sleep(0.2)


@contextlib.contextmanager
def demo_connections(data_dir: Path) -> Iterator[dict[str, str]]:
    """The connections of a run that has none configured (pipeline/airflow_run.py): the
    demo source under `data_dir` and the demo API, started for the duration, so
    `make nightly` works right after `make demo`."""
    paths = demo_paths(data_dir)
    if not (paths["source"].exists() and paths["payments"].exists()):
        raise SystemExit(
            "no connection configured (AIRFLOW_CONN_SOURCE_DB, AIRFLOW_CONN_PAYMENTS_API) "
            "and no demo sources: run `make demo` first or set them (see .env.example)"
        )
    with running_api(paths["payments"], token=DEMO_TOKEN) as api_uri:
        yield {
            "AIRFLOW_CONN_SOURCE_DB": f"sqlite:///{paths['source']}",
            "AIRFLOW_CONN_PAYMENTS_API": api_uri,
        }


def _reachable(url: str) -> bool:
    engine = sa.create_engine(url, connect_args=_connect_timeout(url))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def _connect_timeout(url: str) -> dict:
    if url.startswith("postgresql"):
        return {"connect_timeout": 3}
    if url.startswith("mysql"):
        return {"connect_timeout": 3}
    return {}


def _find_pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise RuntimeError(
        f"PostgreSQL is not reachable and {name!r} is not installed: "
        "install postgresql or set NIGHTSHIFT_TEST_PG_URL"
    )


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin SQLAlchemy URL of a running PostgreSQL server."""
    url = settings.env("NIGHTSHIFT_TEST_PG_URL", DEFAULT_PG_URL)
    if _reachable(url):
        yield url
        return
    tmp = Path(tempfile.mkdtemp(prefix="nightshift-pg-"))
    datadir = tmp / "data"
    port = free_port()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(tmp, user="postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run_as, _find_pg_bin("initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            _find_pg_bin("pg_ctl"),
            "-D",
            str(datadir),
            "-l",
            str(tmp / "server.log"),
            "-o",
            f"-h 127.0.0.1 -p {port} -k {tmp}",
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    try:
        yield url
    finally:
        subprocess.run(
            [*run_as, _find_pg_bin("pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _serving(
    proc: subprocess.Popen, tmp: Path, name: str, answers: Callable[[], bool], *, timeout_s: float
) -> Iterator[None]:
    """A throwaway server started as `proc` (data in `tmp`): wait until it `answers`
    (RuntimeError if it exits or takes longer than `timeout_s`), then stop it and remove
    `tmp` when the block ends."""
    try:
        deadline = time.monotonic() + timeout_s
        while not answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"throwaway {name} did not start")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        with contextlib.suppress(Exception):
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def mariadb_server() -> Iterator[str]:
    """Yield an admin SQLAlchemy URL of a running MariaDB/MySQL server."""
    url = settings.env("NIGHTSHIFT_TEST_MYSQL_URL", DEFAULT_MYSQL_URL)
    if _reachable(url):
        yield url
        return
    installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    daemon = shutil.which("mariadbd") or shutil.which("mysqld") or "/usr/sbin/mariadbd"
    if not installer or not Path(daemon).exists():
        raise RuntimeError(
            "MariaDB is not reachable and not installed: install mariadb-server "
            "or set NIGHTSHIFT_TEST_MYSQL_URL"
        )
    tmp = Path(tempfile.mkdtemp(prefix="nightshift-mariadb-"))
    port = free_port()
    user = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run(
        [
            installer,
            "--no-defaults",
            f"--datadir={tmp / 'data'}",
            "--auth-root-authentication-method=normal",
            *user,
        ],
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [
            daemon,
            "--no-defaults",
            f"--datadir={tmp / 'data'}",
            f"--socket={tmp / 'mysqld.sock'}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            "--skip-grant-tables",
            *user,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"mysql+pymysql://root@127.0.0.1:{port}/mysql"
    with _serving(proc, tmp, "MariaDB", lambda: _reachable(url), timeout_s=60):
        yield url


def _redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Yield the URL (`redis://host:port/db`) of a running Redis server.

    The callers pick their own db number (`redis.connection.parse_url`'s path) where it
    matters: the machine's Redis may be shared."""
    url = settings.env("NIGHTSHIFT_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    if _redis_answers(url):
        yield url
        return
    daemon = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(daemon).exists():
        raise RuntimeError(
            "Redis is not reachable and redis-server is not installed: install redis-server "
            "or set NIGHTSHIFT_TEST_REDIS_URL"
        )
    tmp = Path(tempfile.mkdtemp(prefix="nightshift-redis-"))
    port = free_port()
    proc = subprocess.Popen(
        [
            daemon,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    with _serving(proc, tmp, "Redis", lambda: _redis_answers(url), timeout_s=30):
        yield url


@contextlib.contextmanager
def fresh_database(admin_url: str, prefix: str = "nightshift_test") -> Iterator[str]:
    """Create an empty database on the server, yield its URL, drop it afterwards."""
    name = f"{prefix}_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    is_pg = admin_url.startswith("postgresql")
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    quoted = f'"{name}"' if is_pg else f"`{name}`"
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
    db_url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield db_url
    finally:
        with engine.connect() as conn:
            if is_pg:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
            else:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted}"))
        engine.dispose()
