"""Source timeouts against the real PostgreSQL: a proxy that stops forwarding mid-COPY,
a server that never answers the handshake, a statement past its limit."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from extract.db_extract import ExtractPlan, extract_tables
from extract.pg_copy import connect, stream_pg_batches
from extract.source_timeouts import SourceTimeoutError, connect_args
from extract.tables import TableConfig
from tests.stall_proxy import StallProxy

STALL_S = 2
ROWS = 60_000  # ~4 MB of COPY: far more than the socket buffers hold


@pytest.fixture
def big_table(pg_database: str) -> str:
    engine = sa.create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "create table big (id bigint primary key, note text not null, "
                "updated_at timestamptz not null default now())"
            )
        )
        conn.execute(
            sa.text(
                "insert into big (id, note) select g, repeat('x', 40) || g "
                "from generate_series(1, :n) g"
            ),
            {"n": ROWS},
        )
    engine.dispose()
    return pg_database


@pytest.fixture
def proxy(big_table: str) -> StallProxy:
    with StallProxy(sa.make_url(big_table).port or 5432) as p:
        yield p


def _through(url: str, proxy: StallProxy) -> str:
    return sa.make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


@pytest.fixture
def small_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_READ_STALL_TIMEOUT_S", str(STALL_S))
    monkeypatch.setenv("SOURCE_CONNECT_TIMEOUT_S", "2")


SCHEMA = pa.schema([("id", pa.int64()), ("note", pa.string())])


@pytest.mark.timeout(60)
def test_copy_through_the_proxy_reads_everything(big_table, proxy, small_timeouts) -> None:
    with connect(_through(big_table, proxy)) as pg:
        rows = sum(
            b.num_rows
            for b in stream_pg_batches(
                "", table="big", columns=["id", "note"], schema=SCHEMA, conn=pg, batch_rows=5000
            )
        )
    assert rows == ROWS


@pytest.mark.timeout(60)
def test_a_copy_that_stops_receiving_fails_naming_the_table(
    big_table, proxy, small_timeouts
) -> None:
    """The proxy forwards 200 kB of the COPY, then nothing, with every socket open: the
    read fails after the stall timeout, naming the table and the setting, and the
    connection is closed (no cancel or drain waits on it)."""
    pg = connect(_through(big_table, proxy))
    got = 0
    started = time.monotonic()
    try:
        proxy.stall_after(200_000)
        with pytest.raises(SourceTimeoutError) as caught:
            for batch in stream_pg_batches(
                "", table="big", columns=["id", "note"], schema=SCHEMA, conn=pg, batch_rows=500
            ):
                got += batch.num_rows
    finally:
        pg.close()
    elapsed = time.monotonic() - started
    assert proxy.stalled.is_set()
    assert 0 < got < ROWS, "the stall was not mid-read"
    message = str(caught.value)
    assert message.startswith("big: the source sent nothing for 2 s during its COPY")
    assert "SOURCE_READ_STALL_TIMEOUT_S=2" in message
    assert STALL_S <= elapsed < STALL_S + 8, elapsed


@pytest.mark.timeout(60)
def test_the_extract_fails_within_the_stall_timeout(
    big_table, proxy, small_timeouts, tmp_path: Path
) -> None:
    """Through `extract_tables` (one snapshot transaction, SQLAlchemy): the stalled COPY
    fails the extract with the named error; the rollback does not hang on the dead
    connection; nothing of the table is landed."""
    proxy.stall_after(300_000)
    started = time.monotonic()
    with pytest.raises(SourceTimeoutError, match=r"^big: the source sent nothing for 2 s"):
        extract_tables(
            _through(big_table, proxy),
            ExtractPlan(
                run_id="r1",
                landing_root=tmp_path / "landing",
                warehouse_path=None,
                configs=[TableConfig("big", mode="full")],
                batch_size=1000,
            ),
        )
    assert time.monotonic() - started < STALL_S + 10
    assert not list((tmp_path / "landing").rglob("_manifest.json"))


@pytest.mark.timeout(30)
def test_a_server_that_never_answers_the_handshake_fails_the_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOURCE_CONNECT_TIMEOUT_S", "2")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    port = silent.getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            connect(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    finally:
        silent.close()
        for s in accepted:
            s.close()
    assert time.monotonic() - started < 10


@pytest.mark.timeout(30)
def test_statement_timeout_is_set_on_source_sessions(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every source session carries `statement_timeout` (the URL's own options kept)."""
    monkeypatch.setenv("SOURCE_STATEMENT_TIMEOUT_S", "1")
    url = sa.make_url(pg_database).update_query_dict({"options": "-c search_path=public"})
    engine = sa.create_engine(url, connect_args=connect_args(url))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("show statement_timeout")).scalar() == "1s"
            assert conn.execute(sa.text("show search_path")).scalar() == "public"
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                conn.execute(sa.text("select pg_sleep(3)"))
    finally:
        engine.dispose()
    with connect(url.render_as_string(False)) as pg:
        assert pg.execute("show statement_timeout").fetchone()[0] == "1s"
        assert pg.execute("show search_path").fetchone()[0] == "public"


def test_timeouts_of_other_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """pymysql gets its connect and read/write timeouts (a read that receives nothing for
    SOURCE_READ_STALL_TIMEOUT_S fails); SQLite is a local file: nothing to set."""
    monkeypatch.setenv("SOURCE_READ_STALL_TIMEOUT_S", "7")
    monkeypatch.setenv("SOURCE_CONNECT_TIMEOUT_S", "3")
    assert connect_args("mysql+pymysql://u@db.example/app") == {
        "connect_timeout": 3,
        "read_timeout": 7,
        "write_timeout": 7,
    }
    assert connect_args("sqlite:////tmp/x.db") == {}
    monkeypatch.setenv("SOURCE_STATEMENT_TIMEOUT_S", "0")  # e.g. behind PgBouncer
    assert "options" not in connect_args("postgresql+psycopg://u@db.example/app")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "marker",
    # the key set's COPY reads the key alone (`… AS "id" FROM`), the table's every column
    [b"count(*)", b'AS "id" FROM', b"WHERE false", b"COPY ("],
    ids=["a statement", "the COPY of the key set", "the COPY's column query", "a COPY"],
)
def test_a_statement_without_an_answer_fails_the_extract(
    pg_database: str, small_timeouts, tmp_path: Path, marker: bytes
) -> None:
    """The future-cursor check's count, the COPY of the key set, the COPY's
    column query, the COPY itself: the proxy swallows the statement and forwards nothing
    more; after the stall timeout the connection is closed and the error names the
    table and the setting."""
    engine = sa.create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(sa.text("create table events (id bigint primary key, updated_at timestamptz)"))
        conn.execute(sa.text("insert into events select g, now() from generate_series(1, 10) g"))
    engine.dispose()
    with StallProxy(sa.make_url(pg_database).port or 5432) as proxy:
        proxy.stall_on(marker)
        started = time.monotonic()
        with pytest.raises(SourceTimeoutError) as caught:
            extract_tables(
                _through(pg_database, proxy),
                ExtractPlan(
                    run_id="r1",
                    landing_root=tmp_path / "landing",
                    warehouse_path=None,
                    configs=[TableConfig("events", reconcile_deletes=True)],
                ),
            )
        elapsed = time.monotonic() - started
    assert proxy.stalled.is_set()
    assert str(caught.value).startswith(
        "events: the source did not answer for 2 s (SOURCE_READ_STALL_TIMEOUT_S=2); "
        "the connection was closed"
    ), str(caught.value)
    assert elapsed < STALL_S + 8, elapsed


@pytest.mark.timeout(60)
def test_a_statement_past_the_statement_timeout_names_table_and_setting(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read waiting on a lock (an ALTER TABLE left open) is cancelled by the server at
    SOURCE_STATEMENT_TIMEOUT_S; the error names the table and the setting (retried)."""
    monkeypatch.setenv("SOURCE_STATEMENT_TIMEOUT_S", "1")
    engine = sa.create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(sa.text("create table events (id bigint primary key, updated_at timestamptz)"))
    holder = engine.connect()
    try:
        holder.begin()
        holder.execute(sa.text("lock table events in access exclusive mode"))
        with pytest.raises(SourceTimeoutError) as caught:
            extract_tables(
                pg_database,
                ExtractPlan(
                    run_id="r1",
                    landing_root=tmp_path / "landing",
                    warehouse_path=None,
                    configs=[TableConfig("events")],
                ),
            )
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    message = str(caught.value)
    assert message.startswith(
        "events: a statement on the source ran longer than SOURCE_STATEMENT_TIMEOUT_S=1 s"
    ), message
    assert "canceling statement due to statement timeout" in message
