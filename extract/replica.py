"""Read from `source_db_replica` when it is fresh enough, else the primary (or fail).

`choose_read_url` measures the replica's replication lag right before the extract and
decides where the extract reads from. The lag is an upper bound on the replica's
staleness: every transaction the primary committed more than `lag` seconds ago is
visible on the replica.

- PostgreSQL (streaming standby): 0 when everything received has been replayed and the
  WAL receiver is streaming; otherwise `now() - pg_last_xact_replay_timestamp()` (age
  of the last replayed commit; it over-estimates after an idle period, never under).
  Unknown (receiving WAL, nothing replayed yet) is `inf`. A server that is not in
  recovery is a primary: 0.
- MySQL / MariaDB: `Seconds_Behind_Master` (`Seconds_Behind_Source`) of
  `SHOW REPLICA STATUS` (falls back to `SHOW SLAVE STATUS`); no status row = not a
  replica = 0; NULL (replication threads stopped or broken) = `inf`.
- SQLite: 0 (no replication). Other dialects: None (unknown).

An unreachable replica, or one whose lag cannot be read, counts as lag = `inf`.
Nothing is ever written through the URL chosen here (the extract only reads); the
pipeline's own state lives in the warehouse, never in the source.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa

from core.settings import safe_url, sqlalchemy_url

log = logging.getLogger(__name__)

OnLag = Literal["primary", "fail"]
NO_REPLICA = "no replica configured"  # the reason of a ReadChoice without a replica

# Lag of a PostgreSQL standby: 0 while it has replayed all it received from a live WAL
# stream (an idle primary writes no commits, so the age of the last replayed commit
# would grow without the standby being behind); else the age of the last replayed
# commit; NULL when nothing has been replayed since startup (unknown).
_PG_LAG_SQL = """
select
    pg_is_in_recovery() as in_recovery,
    case
        when pg_last_wal_receive_lsn() is not null
             and pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
             and exists (
                 -- status is NULL for roles without pg_read_all_stats: pid row suffices
                 select 1 from pg_stat_wal_receiver
                 where coalesce(status, 'streaming') = 'streaming'
             )
        then 0.0
        else extract(epoch from now() - pg_last_xact_replay_timestamp())::float8
    end as lag_seconds
"""


class ReplicaLagError(RuntimeError):
    """The replica is too far behind (or unreachable) and the config says fail."""


@dataclass(frozen=True)
class ReadChoice:
    """Where the extract reads from, and why."""

    url: str
    used_replica: bool
    lag_seconds: float | None
    reason: str

    def __repr__(self) -> str:  # never print a password
        return (
            f"ReadChoice(url={safe_url(self.url)!r}, used_replica={self.used_replica}, "
            f"lag_seconds={self.lag_seconds!r}, reason={self.reason!r})"
        )


def _connect_args(dialect: str, timeout: int) -> dict:
    if dialect in ("postgresql", "mysql", "mariadb"):
        return {"connect_timeout": timeout}
    return {}


def replication_lag_seconds(url: str, *, connect_timeout: int = 5) -> float | None:
    """Replication lag of the database at `url` in seconds (0.0 for a primary).

    `inf` when the lag is unbounded (replication broken, nothing replayed yet); None
    for a dialect whose lag this module cannot read. Connection errors propagate.
    """
    sa_url = sa.make_url(sqlalchemy_url(url))
    dialect = sa_url.get_backend_name()
    if dialect == "sqlite":
        return 0.0
    if dialect not in ("postgresql", "mysql", "mariadb"):
        return None
    engine = sa.create_engine(
        sa_url, poolclass=sa.pool.NullPool, connect_args=_connect_args(dialect, connect_timeout)
    )
    from extract.source_timeouts import install

    install(engine)  # a replica that stops answering fails after SOURCE_READ_STALL_TIMEOUT_S
    try:
        with engine.connect() as conn:
            if dialect == "postgresql":
                return _pg_lag(conn)
            return _mysql_lag(conn)
    finally:
        engine.dispose()


def _pg_lag(conn: sa.Connection) -> float:
    row = conn.execute(sa.text(_PG_LAG_SQL)).one()
    if not row.in_recovery:
        return 0.0
    if row.lag_seconds is None:
        return math.inf
    return max(0.0, float(row.lag_seconds))


def _mysql_lag(conn: sa.Connection) -> float:
    rows = None
    last_error: Exception | None = None
    for stmt in ("SHOW REPLICA STATUS", "SHOW SLAVE STATUS"):
        try:
            rows = conn.execute(sa.text(stmt)).mappings().all()
            break
        except sa.exc.DBAPIError as exc:  # older server without REPLICA syntax
            last_error = exc
            conn.rollback()
    if rows is None:
        assert last_error is not None
        raise last_error
    if not rows:
        return 0.0  # not configured as a replica: it is a primary (or standalone)
    lags = []
    for row in rows:  # several rows with multi-source replication: the worst one
        value = row.get("Seconds_Behind_Source", row.get("Seconds_Behind_Master"))
        lags.append(math.inf if value is None else float(value))
    return max(lags)


LagFn = Callable[[str], float | None]


def choose_read_url(
    primary_url: str,
    replica_url: str | None,
    *,
    max_lag_seconds: float,
    on_lag: OnLag,
    lag_fn: LagFn = replication_lag_seconds,
) -> ReadChoice:
    """Pick the URL the extract reads from.

    The replica when it is configured and its lag is at most `max_lag_seconds`;
    otherwise the primary (`on_lag="primary"`) or `ReplicaLagError` (`"fail"`).
    An unreachable replica, or one whose lag is unknown, counts as too far behind.
    `lag_fn` is the measurement (injectable for tests).
    """
    if on_lag not in ("primary", "fail"):
        raise ValueError(f"on_lag must be 'primary' or 'fail', got {on_lag!r}")
    if max_lag_seconds < 0:
        raise ValueError(f"max_lag_seconds must be >= 0, got {max_lag_seconds!r}")
    if not replica_url:
        return ReadChoice(primary_url, False, None, NO_REPLICA)

    shown = safe_url(replica_url)
    try:
        lag = lag_fn(replica_url)
        problem = None if lag is not None else "its replication lag cannot be measured"
    except Exception as exc:  # unreachable, no privilege to read the status, ...
        lag = math.inf
        problem = f"it is unreachable or its lag cannot be read ({type(exc).__name__}: {exc})"
        # the driver's message may quote the URL: make sure no password leaks
        password = sa.make_url(sqlalchemy_url(replica_url)).password
        if password:
            problem = problem.replace(str(password), "***")
    if problem is None and lag is not None and lag <= max_lag_seconds:
        reason = f"replica {shown} lag {lag:.1f}s <= {max_lag_seconds:g}s"
        log.info("reading from the replica: %s", reason)
        return ReadChoice(replica_url, True, lag, reason)

    if problem is None:
        problem = f"its replication lag {_lag_text(lag)} exceeds the threshold {max_lag_seconds:g}s"
    message = f"replica {shown}: {problem}"
    if on_lag == "fail":
        raise ReplicaLagError(message + " (on_lag=fail)")
    reason = message + f"; reading from the primary {safe_url(primary_url)}"
    log.warning("%s", reason)
    _alert_fallback(reason, lag, max_lag_seconds)
    return ReadChoice(primary_url, False, lag, reason)


def _alert_fallback(reason: str, lag: float | None, max_lag_seconds: float) -> None:
    """The `replica_fallback` alert rule (config/alerts.yml), sent at once; never raises."""
    try:
        from alerting.runs import replica_fallback

        replica_fallback(reason, lag, max_lag_seconds)
    except Exception:  # an alert must not change where the extract reads
        log.exception("replica fallback: the alert could not be sent")


def replica_safe_window_end(window_end: datetime, choice: ReadChoice) -> datetime:
    """The extract window's upper bound `U` corrected for the replica's lag.

    `U` is the source's clock at the start of the snapshot, but a replica only holds
    what the primary committed up to about `U - lag`. Recording `U` as the watermark
    would let the next window (starting at `U - overlap`) skip rows committed in
    between whenever `lag + 10 min out-of-order bound > overlap`. Record `U - lag`
    instead (the lag was measured before the snapshot, and replay only moves forward,
    so the snapshot holds at least that much). Unchanged when reading the primary.
    """
    if not choice.used_replica or not choice.lag_seconds:
        return window_end
    if math.isinf(choice.lag_seconds):  # cannot happen for a chosen replica; be safe
        raise ValueError("a replica with unbounded lag has no safe window end")
    return window_end - timedelta(seconds=choice.lag_seconds)


def _lag_text(lag: float | None) -> str:
    """A replica's lag for a log line or an error."""
    if lag is None:
        return "unknown"
    if math.isinf(lag):
        return "inf (replication broken or unknown)"
    return f"{lag:.1f}s"
