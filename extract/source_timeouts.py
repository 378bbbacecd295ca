"""Timeouts of the source database connections (settings in `pipeline.settings`).

A source that stops answering must fail the extract, not hold the night (and, with
`max_active_runs=1`, every later night) forever. Three layers:

- opening a connection: `SOURCE_CONNECT_TIMEOUT_S` (libpq `connect_timeout`; pymysql's
  `connect_timeout`);
- one statement: `SOURCE_STATEMENT_TIMEOUT_S`, enforced by the server itself
  (PostgreSQL `statement_timeout`, set for the session through libpq `options`); TCP
  keepalives and `tcp_user_timeout` notice a peer that is gone (host down, cable cut);
- a read that stops receiving: a server (or a proxy, a NAT, a load balancer) that keeps
  the connection open but sends nothing more is invisible to the server's timeout and to
  keepalives (the kernel of the peer still answers them). Only the client can notice:
  the COPY read loop (`extract.pg_copy`) fails when no byte arrived for
  `SOURCE_READ_STALL_TIMEOUT_S` seconds, after shutting the socket down so that nothing
  afterwards (the COPY's cancel and drain, the transaction's rollback) waits on it
  again; pymysql's `read_timeout` does the same for MySQL/MariaDB.

`SourceTimeoutError` is transient: Airflow retries it (unlike data errors).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from pipeline import settings


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


class StatementWatchdog:
    """The client-side deadline of one extract's PostgreSQL statements.

    Armed around every statement SQLAlchemy executes on the engine (and, through
    `watched`, around every fetch of a streamed result): when one waits more than
    `stall_s` seconds without an answer, the connection's socket is shut down, the
    statement fails at once, and `check(exc)` turns that failure into a
    `SourceTimeoutError` naming what was running. The server's `statement_timeout`
    answers first when the server is alive and reachable (it is a few seconds shorter
    only in configurations where `SOURCE_STATEMENT_TIMEOUT_S` < `SOURCE_READ_STALL_
    TIMEOUT_S`); the watchdog is for a server or network that stops answering.
    The COPY fast path has its own stall deadline (`extract.pg_copy`).
    """

    INFO_KEY = "nightshift_statement_watchdog"

    def __init__(self, stall_s: float, what: str) -> None:
        self.stall_s = stall_s
        self.what = what
        self._lock = threading.Lock()
        self._armed: tuple[float, int, str] | None = None  # (since, socket fd, what)
        self.fired: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="source-watchdog", daemon=True)

    # -- wiring ---------------------------------------------------------------------
    def attach(self, engine: sa.Engine) -> None:
        """Arm around every statement of `engine` (PostgreSQL over psycopg only)."""
        if engine.dialect.name != "postgresql":
            return
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)
        sa.event.listen(engine, "handle_error", self._on_error)
        sa.event.listen(engine, "engine_connect", self._register)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _register(self, conn: sa.Connection) -> None:
        conn.info[self.INFO_KEY] = self

    def _before(self, conn, cursor, statement, parameters, context, executemany) -> None:
        fd = _socket_of(cursor)
        if fd is not None:
            self.arm(fd, " ".join(str(statement).split())[:120])

    def _after(self, conn, cursor, statement, parameters, context, executemany) -> None:
        options = getattr(context, "execution_options", None) or {}
        if options.get("stream_results"):
            return  # the first rows are fetched after this event; `watched` takes over
        self.disarm()

    def _on_error(self, context: Any) -> None:
        self.disarm()

    # -- arming ---------------------------------------------------------------------
    def arm(self, fd: int, what: str) -> None:
        with self._lock:
            self._armed = (time.monotonic(), fd, what)

    def disarm(self) -> None:
        with self._lock:
            self._armed = None

    def _watch(self) -> None:
        while not self._stop.wait(min(0.25, self.stall_s / 4)):
            with self._lock:
                armed = self._armed
                if armed is None or time.monotonic() - armed[0] < self.stall_s:
                    continue
                self._armed = None
                self.fired = (
                    f"{self.what}: the source did not answer for {self.stall_s:g} s "
                    f"(statement: {armed[2]}) (SOURCE_READ_STALL_TIMEOUT_S="
                    f"{settings.source_read_stall_timeout_s()}); the connection was closed. "
                    "A transient failure (network, proxy, server): retried"
                )
            shutdown_socket(armed[1])

    def check(self, exc: BaseException) -> None:
        """Raise `SourceTimeoutError` when `exc` is the failure this watchdog caused."""
        if self.fired is not None and not isinstance(exc, SourceTimeoutError):
            raise SourceTimeoutError(self.fired) from exc


def _socket_of(cursor: Any) -> int | None:
    pgconn = getattr(getattr(cursor, "connection", None), "pgconn", None)
    fd = getattr(pgconn, "socket", None)
    return fd if isinstance(fd, int) and fd >= 0 else None


def watched(conn: sa.Connection, items: Iterator[Any], what: str) -> Iterator[Any]:
    """`items` (the fetches of a streamed result on `conn`), each `next()` under the
    connection's `StatementWatchdog` when it has one."""
    dog: StatementWatchdog | None = conn.info.get(StatementWatchdog.INFO_KEY)
    fd = None
    if dog is not None:
        raw = getattr(conn.connection, "driver_connection", None)
        fd = getattr(getattr(raw, "pgconn", None), "socket", None)
    while True:
        if dog is not None and isinstance(fd, int):
            dog.arm(fd, what)
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            if dog is not None:
                dog.disarm()
        yield item
