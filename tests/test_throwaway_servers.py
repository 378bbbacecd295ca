"""Where no server runs (a laptop), the tests start throwaway ones on loopback and stop
them: pinned here for Redis and MariaDB by pointing the URL at a port nothing serves."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from demo.servers import mariadb_server, redis_server

# they start servers: not in `make test-fast`
pytestmark = pytest.mark.server


def _serves(url_port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", url_port)) == 0


def _started_and_stopped(monkeypatch, env: str, url: str, server, probe) -> None:
    monkeypatch.setenv(env, url)
    before = set(Path(tempfile.gettempdir()).glob("nightshift-*"))
    with server() as started:
        assert started != url and "127.0.0.1" in started
        port = int(started.split("127.0.0.1:")[1].split("/")[0])
        assert _serves(port)
        probe(started)
        made = set(Path(tempfile.gettempdir()).glob("nightshift-*")) - before
        assert made, "the throwaway server keeps its data in a temporary folder"
    assert not _serves(port), "the throwaway server is stopped when the block ends"
    assert not any(p.exists() for p in made), "its temporary folder is removed"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_a_throwaway_redis_when_none_answers(monkeypatch) -> None:
    import redis

    def probe(url: str) -> None:
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()

    _started_and_stopped(
        monkeypatch, "NIGHTSHIFT_TEST_REDIS_URL", "redis://127.0.0.1:1/0", redis_server, probe
    )


@pytest.mark.skipif(
    shutil.which("mariadb-install-db") is None and shutil.which("mysql_install_db") is None,
    reason="MariaDB not installed",
)
def test_a_throwaway_mariadb_when_none_answers(monkeypatch) -> None:
    import sqlalchemy as sa

    def probe(url: str) -> None:
        engine = sa.create_engine(url)
        with engine.connect() as con:
            assert con.execute(sa.text("select 1")).scalar() == 1
        engine.dispose()

    _started_and_stopped(
        monkeypatch,
        "NIGHTSHIFT_TEST_MYSQL_URL",
        "mysql+pymysql://root@127.0.0.1:1/mysql",
        mariadb_server,
        probe,
    )
