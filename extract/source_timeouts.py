"""Timeouts of the source database connections (settings in `core.settings`).

A source that stops answering must fail the extract, not hold the night (and, with
`max_active_runs=1`, every later night) forever. Three layers:

- opening a connection: `SOURCE_CONNECT_TIMEOUT_S` (libpq `connect_timeout`; pymysql's
  `connect_timeout`);
- one statement: `SOURCE_STATEMENT_TIMEOUT_S`, enforced by the server itself
  (PostgreSQL `statement_timeout`, set for the session through libpq `options`; behind
  PgBouncer, which refuses that startup parameter unless `ignore_startup_parameters`
  lists `options`, set `SOURCE_STATEMENT_TIMEOUT_S=0`); TCP keepalives and
  `tcp_user_timeout` notice a peer that is gone (host down, cable cut);
- a read that stops receiving: a server (or a proxy, a NAT, a load balancer) that keeps
  the connection open but sends nothing more is invisible to the server's timeout and to
  keepalives (the kernel of the peer still answers them). Only the client can notice:
  every PostgreSQL source connection is a `SourceConnection`, whose every wait for the
  server (a query, a fetch, the start and end of a COPY, a rollback) fails after
  `SOURCE_READ_STALL_TIMEOUT_S` seconds without an answer, and the COPY read loop
  (`extract.pg_copy`) fails when no byte arrived for as long; both shut the socket down
  first, so that nothing afterwards (the COPY's cancel and drain, the transaction's
  rollback) waits on it again. pymysql's `read_timeout` does the same for MySQL/MariaDB.
  The same deadline therefore bounds how long a statement may run before the server
  sends its first bytes: raise it for a source where that is legitimately longer.

`SourceTimeoutError` is transient: Airflow retries it (unlike data errors).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any

import sqlalchemy as sa

from core import settings


class SourceTimeoutError(RuntimeError):
    """The source did not answer in time; the message names the table (where known), what
    timed out and the setting that controls it. Transient: the task is retried."""


def _statement_option(existing: str | None) -> str | None:
    """libpq `options` with `-c statement_timeout=...` added (kept: the URL's own options)."""
    seconds = settings.source_statement_timeout_s()
    if not seconds:
        return existing or None
    ours = f"-c statement_timeout={seconds * 1000}"
    return f"{existing} {ours}" if existing else ours


def pg_connect_kwargs(existing_options: str | None = None) -> dict[str, Any]:
    """libpq parameters of every source connection to PostgreSQL (psycopg `connect()`
    keywords, or SQLAlchemy `connect_args`)."""
    stall = settings.source_read_stall_timeout_s()
    kwargs: dict[str, Any] = {
        "connect_timeout": settings.source_connect_timeout_s(),
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        # data sent but not acknowledged for this long: the peer is gone
        "tcp_user_timeout": stall * 1000,
    }
    options = _statement_option(existing_options)
    if options:
        kwargs["options"] = options
    return kwargs


def connect_args(url: str | sa.URL) -> dict[str, Any]:
    """SQLAlchemy `connect_args` carrying the source timeouts for `url`'s database."""
    parsed = sa.make_url(url) if isinstance(url, str) else url
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        existing = parsed.query.get("options")
        if isinstance(existing, tuple):
            existing = " ".join(existing)
        return pg_connect_kwargs(existing)
    if backend in ("mysql", "mariadb") and parsed.get_driver_name() == "pymysql":
        stall = settings.source_read_stall_timeout_s()
        return {
            "connect_timeout": settings.source_connect_timeout_s(),
            "read_timeout": stall,
            "write_timeout": stall,
        }
    return {}


def shutdown_socket(fd: int) -> None:
    """Shut the connection's socket down (both ways) without closing the descriptor its
    driver owns: a read blocked on it returns at once, every later one fails."""
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        dup = socket.socket(fileno=os.dup(fd))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


def stall_message(table: str, seconds: float, during: str) -> str:
    return (
        f"{table}: the source sent nothing for {seconds:g} s during {during} "
        f"(SOURCE_READ_STALL_TIMEOUT_S={settings.source_read_stall_timeout_s()}); the "
        "connection was closed. A transient failure (network, proxy, server): retried; "
        "raise SOURCE_READ_STALL_TIMEOUT_S if the server really needs longer to send "
        "the first rows"
    )


def raise_source_timeout(exc: BaseException) -> None:
    """Raise the `SourceTimeoutError` behind `exc` (its cause or context, e.g. a rollback
    that failed on the connection the timeout closed), if there is one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, SourceTimeoutError):
            if current is exc:
                return  # already the one raised
            raise current from None
        seen.add(id(current))
        current = current.__cause__ or current.__context__


def source_connection_class() -> type:
    """`SourceConnection`: a psycopg connection whose every wait for the server has a
    deadline (built on first use: psycopg is imported only where PostgreSQL is read).

    psycopg runs every blocking operation (a query, a fetch of a server-side cursor, the
    start and the end of a COPY, a commit or rollback) through `Connection.wait`. Here,
    a wait without its own timeout gets `stall_s` (`SOURCE_READ_STALL_TIMEOUT_S`): when
    the server sends nothing for that long, the socket is shut down (nothing afterwards
    waits on it again: the transaction's rollback fails at once) and
    `SourceTimeoutError` names `what` (the table being read) and the setting. The server's
    own `statement_timeout` still ends a statement the server is running; this is for a
    server or network that stops answering. The COPY's rows are read by
    `extract.pg_copy` without `wait`, with the same deadline of its own.
    """
    global _SOURCE_CONNECTION
    with _CLASS_LOCK:  # one class: `label` recognises its instances
        if _SOURCE_CONNECTION is None:
            _SOURCE_CONNECTION = _build_source_connection()
        return _SOURCE_CONNECTION


def _build_source_connection() -> type:
    import psycopg
    from psycopg import errors

    class SourceConnection(psycopg.Connection):
        stall_s: float = float("inf")
        what: str = "source_db"

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            own = timeout is None and self.stall_s != float("inf")
            try:
                return super().wait(
                    gen, interval=interval, timeout=self.stall_s if own else timeout
                )
            except errors._WaitTimeout as exc:
                if not own:
                    raise
                shutdown_socket(self.pgconn.socket)
                with contextlib.suppress(Exception):
                    self.pgconn.consume_input()  # libpq sees the closed connection
                raise SourceTimeoutError(
                    f"{self.what}: the source did not answer for {self.stall_s:g} s "
                    f"(SOURCE_READ_STALL_TIMEOUT_S={self.stall_s:g}); the connection was "
                    "closed. A transient failure (network, proxy, server): retried; raise "
                    "SOURCE_READ_STALL_TIMEOUT_S if a statement really needs longer"
                ) from exc

    return SourceConnection


_SOURCE_CONNECTION: type | None = None
_CLASS_LOCK = threading.Lock()


def connect_pg(conninfo: str = "", **kwargs: Any) -> Any:
    """A `SourceConnection` (psycopg) with the source timeouts."""
    conn = source_connection_class().connect(conninfo, **kwargs)
    conn.stall_s = float(settings.source_read_stall_timeout_s())
    return conn


def install(engine: sa.Engine) -> None:
    """Make `engine`'s PostgreSQL (psycopg) connections `SourceConnection`s."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return

    @sa.event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
        return connect_pg(*cargs, **cparams)


def label(conn: Any, what: str) -> None:
    """Name what `conn` (SQLAlchemy or psycopg) reads now, for its timeout's message."""
    if isinstance(conn, sa.Connection):
        conn = getattr(conn.connection, "driver_connection", None)
    cls = _SOURCE_CONNECTION
    if cls is not None and isinstance(conn, cls):
        conn.what = what


def raise_statement_timeout(exc: BaseException, table: str) -> None:
    """Raise `SourceTimeoutError` naming `table` and the setting when `exc` is (or was
    caused by) PostgreSQL cancelling a statement at its `statement_timeout`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if type(current).__name__ == "QueryCanceled" and "statement timeout" in str(current):
            raise SourceTimeoutError(
                f"{table}: a statement on the source ran longer than "
                f"SOURCE_STATEMENT_TIMEOUT_S={settings.source_statement_timeout_s()} s and "
                "was cancelled by the server (a lock it waited for, an unexpectedly slow "
                "plan); retried; raise SOURCE_STATEMENT_TIMEOUT_S if the read really needs "
                f"longer. The server said: {str(current).strip().splitlines()[0]}"
            ) from exc
        seen.add(id(current))
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)
