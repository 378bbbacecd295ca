"""Which database a source is, taken from the database itself (docs/operating.md).

The identity decides whether a run reads the source it read before (watermarks and the
schema-drift baseline apply) or another one (read in full, raw replaced; the
mass-delete guard still judges what that would delete, warehouse/load.py):

- PostgreSQL: the cluster's `system_identifier` (`pg_control_system()`) plus the
  database's oid and name (`pg_database`, `current_database()`);
- MySQL: `@@server_uuid` plus the schema (`database()`); MariaDB has no server_uuid:
  `@@hostname`, `@@port` and `@@datadir` of the server plus the schema;
- SQLite: the database file's device and inode (a copy of the file is another source);
- otherwise, or when the server refuses the query: `url_source_id`, the hash of the URL
  without its password (what manifests recorded as `source_id` before).

Connection options, the user and the host name used to reach the server do not change
the identity; another database on the same server does. A physical backup restored in
place keeps a PostgreSQL identity: `restore_reason` notices a source that went back in
time (a new timeline, or a table's newest cursor older than what was already loaded).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

log = logging.getLogger(__name__)


def url_source_id(url: str) -> str:
    """The URL-derived id: the URL without its password, hashed (the fallback identity,
    and the `source_id` every manifest has carried)."""
    try:
        text = sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: the raw text still identifies it
        text = url
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _scalar(conn: sa.Connection, sql: str) -> Any:
    """One value, in a savepoint where the dialect needs one (an error on PostgreSQL
    would abort the run's transaction); None when the server refuses the query."""
    try:
        if conn.dialect.name == "postgresql" and conn.in_transaction():
            with conn.begin_nested():
                return conn.execute(sa.text(sql)).scalar()
        return conn.execute(sa.text(sql)).scalar()
    except sa.exc.DBAPIError as exc:
        log.info("source identity: %s not available (%s)", sql, type(exc.orig).__name__)
        return None


def database_identity(conn: sa.Connection) -> str | None:
    """The identity the database gives of itself, or None (see the module docstring)."""
    name = conn.dialect.name
    if name == "postgresql":
        system = _scalar(conn, "select system_identifier from pg_control_system()")
        db = conn.execute(
            sa.text("select oid, datname from pg_database where datname = current_database()")
        ).one()
        if system is None:
            return None
        return f"postgresql:{system}:{db[0]}:{db[1]}"
    if name in ("mysql", "mariadb"):
        schema = conn.execute(sa.text("select database()")).scalar()
        version = str(conn.execute(sa.text("select version()")).scalar() or "")
        if "mariadb" not in version.lower():
            server = _scalar(conn, "select @@server_uuid")
            if server:
                return f"mysql:{server}:{schema}"
        row = conn.execute(sa.text("select @@hostname, @@port, @@datadir")).one()
        server = hashlib.sha256("|".join(str(v) for v in row).encode()).hexdigest()[:16]
        return f"mariadb:{server}:{schema}"
    if name == "sqlite":
        for _seq, db_name, path in conn.exec_driver_sql("pragma database_list").fetchall():
            if db_name == "main" and path:
                st = os.stat(path)
                return f"sqlite:{st.st_dev}:{st.st_ino}"
        return None  # in memory
    return None


def source_identity(conn: sa.Connection, url: str) -> str:
    """`database_identity`, else the URL-derived id of `url`."""
    return database_identity(conn) or url_source_id(url)


def timeline(conn: sa.Connection) -> int | None:
    """PostgreSQL's current timeline (a point-in-time recovery starts a new one)."""
    if conn.dialect.name != "postgresql":
        return None
    value = _scalar(conn, "select timeline_id from pg_control_checkpoint()")
    return None if value is None else int(value)


def same_source(manifest: Mapping[str, Any], identity: str | None, source_id: str | None) -> bool:
    """Whether `manifest` was landed from the source of identity `identity` (URL-derived
    id `source_id`). A manifest without `source_identity` (written before it existed)
    counts as its URL-derived `source_id`; one with neither, or a caller without an
    identity, counts as the same source."""
    if identity is None:
        return True
    theirs = manifest.get("source_identity")
    if theirs is not None:
        return theirs == identity
    old = manifest.get("source_id")
    if old is not None and source_id is not None:
        return old == source_id
    return True


def _aware(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def restore_reason(
    conn: sa.Connection,
    configs: Sequence[Any],
    loaded: Mapping[str, datetime | None],
    previous_timeline: int | None,
    current_timeline: int | None,
) -> str | None:
    """Why the source looks restored to an earlier state, or None.

    `loaded`: per incremental table, the newest cursor value already loaded. Only a
    source maximum strictly older than that minus the table's overlap counts (a table
    without new rows has its maximum at the loaded one). An empty table, or one without
    cursor values, is no evidence (emptied is not restored: the mass-delete guard judges
    its key set), nor is a `reconcile_deletes` table, whose newest rows may be hard
    deleted (docs/contract.md, "Sources")."""
    if (
        previous_timeline is not None
        and current_timeline is not None
        and previous_timeline != current_timeline
    ):
        return (
            f"the source's PostgreSQL timeline changed from {previous_timeline} to "
            f"{current_timeline} since the last run (point-in-time recovery)"
        )
    metadata = sa.MetaData()
    for config in configs:
        mark = loaded.get(config.name)
        if config.mode != "incremental" or mark is None or config.reconcile_deletes:
            continue
        table = sa.Table(config.name, metadata, sa.Column(config.cursor))
        newest = _aware(conn.execute(sa.select(sa.func.max(table.c[config.cursor]))).scalar())
        if newest is not None and newest < mark - config.overlap:
            return (
                f"the source went back in time: newest {config.name}.{config.cursor} is "
                f"{newest} but {mark.isoformat()} was already loaded (overlap "
                f"{config.overlap})"
            )
    return None


class SourceCheck:
    """Run once per extract, in the extract's own connection and snapshot: the source's
    identity for every manifest, and why the run must read everything (another source
    than the one the warehouse was loaded from, or a restore), if it must."""

    def __init__(
        self,
        url: str,
        warehouse_path: Any,
        source: str = "source_db",
        *,
        reading_replica: bool = False,
    ) -> None:
        """`url`: the primary's. With `reading_replica` (the extract reads a replica), the
        identity and timeline are the primary's, read on a short connection of its own: a
        MySQL replica has its own server_uuid, and a run that falls back from the replica
        to the primary is still the same source."""
        self.url = url
        self.warehouse_path = warehouse_path
        self.source = source
        self.reading_replica = reading_replica

    def _of_primary(self) -> tuple[str, int | None]:
        from core.settings import sqlalchemy_url
        from extract.source_timeouts import connect_args

        url = sqlalchemy_url(self.url)
        engine = sa.create_engine(url, connect_args=connect_args(url))
        try:
            with engine.connect() as conn, conn.begin():
                return source_identity(conn, self.url), timeline(conn)
        finally:
            engine.dispose()

    def __call__(
        self, conn: sa.Connection, configs: Sequence[Any]
    ) -> tuple[dict[str, Any], str | None]:
        from extract.watermark import last_loaded_manifest, loaded_max_cursor_since_full

        if self.reading_replica:
            identity, current_timeline = self._of_primary()
        else:
            identity, current_timeline = source_identity(conn, self.url), timeline(conn)
        source_id = url_source_id(self.url)
        extras: dict[str, Any] = {"source_id": source_id, "source_identity": identity}
        if current_timeline is not None:
            extras["source_timeline"] = current_timeline
        log.info("source identity: %s", identity)
        if self.warehouse_path is None:
            return extras, None
        previous = last_loaded_manifest(self.warehouse_path, self.source, "orders")
        if previous is None:
            return extras, None
        if not same_source(previous, identity, source_id):
            was = previous.get("source_identity") or previous.get("source_id")
            return extras, (
                f"{self.source} is not the database the warehouse was loaded from "
                f"(source identity {identity}, was {was})"
            )
        loaded = {
            c.name: loaded_max_cursor_since_full(self.warehouse_path, self.source, c.name)
            for c in configs
            if c.mode == "incremental"
        }
        return extras, restore_reason(
            conn, configs, loaded, previous.get("source_timeline"), current_timeline
        )
