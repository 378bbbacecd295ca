"""A source's identity comes from the database itself (extract/source_identity.py), on
the real servers: connection options, users and host names do not change it, another
database does; and the drift check compares only landings of the same identity."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from extract.landing import (
    DriftScope,
    LandingOptions,
    LandingTarget,
    SchemaDriftError,
    check_schema_drift,
    write_landing_table,
)
from extract.source_identity import (
    SourceCheck,
    database_identity,
    restore_reason,
    same_source,
    source_identity,
    timeline,
    url_source_id,
)
from extract.tables import TableConfig
from tests.servers import fresh_database


def _identity(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn, conn.begin():
            return database_identity(conn)
    finally:
        engine.dispose()


def _with_query(url: str, **query: str) -> str:
    return sa.make_url(url).update_query_dict(query).render_as_string(hide_password=False)


# -- PostgreSQL --------------------------------------------------------------------------


def test_postgres_identity_is_the_cluster_and_the_database(
    postgres_admin_url: str, pg_database: str
) -> None:
    ident = _identity(pg_database)
    assert ident is not None and ident.startswith("postgresql:")
    name = sa.make_url(pg_database).database
    assert ident.endswith(f":{name}")
    with fresh_database(postgres_admin_url) as other:
        assert _identity(other) != ident  # two databases of one server differ
    # the same database through another URL form: options, host name
    same = _with_query(pg_database, sslmode="disable", connect_timeout="5")
    assert _identity(same) == ident
    url = sa.make_url(pg_database)
    other_host = "localhost" if url.host == "127.0.0.1" else "127.0.0.1"
    assert _identity(url.set(host=other_host).render_as_string(hide_password=False)) == ident
    assert url_source_id(same) != url_source_id(pg_database)  # what used to change


def test_postgres_identity_is_the_same_for_another_user(pg_database: str) -> None:
    role = f"ident_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_database, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"create role {role} login")  # name from uuid: no input
        url = sa.make_url(pg_database).set(username=role, password=None)
        assert _identity(url.render_as_string(hide_password=False)) == _identity(pg_database)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"drop role if exists {role}")
        admin.dispose()


def test_postgres_timeline_is_read(pg_database: str) -> None:
    engine = sa.create_engine(pg_database)
    try:
        with engine.connect() as conn, conn.begin():
            assert isinstance(timeline(conn), int)
    finally:
        engine.dispose()


# -- MariaDB -----------------------------------------------------------------------------


def test_mariadb_identity_is_the_server_and_the_schema(
    mariadb_admin_url: str, mariadb_database: str
) -> None:
    ident = _identity(mariadb_database)
    assert ident is not None and ident.startswith(("mariadb:", "mysql:"))
    assert ident.endswith(f":{sa.make_url(mariadb_database).database}")
    with fresh_database(mariadb_admin_url) as other:
        assert _identity(other) != ident  # another schema of the same server
    assert _identity(_with_query(mariadb_database, connect_timeout="5")) == ident
    url = sa.make_url(mariadb_database)
    other_host = "localhost" if url.host == "127.0.0.1" else "127.0.0.1"
    if other_host == "localhost":  # pymysql: localhost is still TCP with a port
        assert _identity(url.set(host=other_host).render_as_string(hide_password=False)) == ident


# -- SQLite ------------------------------------------------------------------------------


def test_sqlite_identity_is_the_file(tmp_path: Path) -> None:
    path = tmp_path / "src.db"
    sqlite3.connect(path).execute("create table t (id integer)").connection.commit()
    ident = _identity(f"sqlite:///{path}")
    assert ident is not None and ident.startswith("sqlite:")
    link = tmp_path / "link.db"
    link.symlink_to(path)
    assert _identity(f"sqlite:///{link}") == ident  # another path to the same file
    copy = tmp_path / "copy.db"
    shutil.copy(path, copy)
    assert _identity(f"sqlite:///{copy}") != ident  # a copy is another source


def test_in_memory_sqlite_falls_back_to_the_url() -> None:
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        assert database_identity(conn) is None
        assert source_identity(conn, "sqlite://") == url_source_id("sqlite://")


# -- same_source and the drift check ----------------------------------------------------


def test_same_source_reads_old_manifests_as_their_url_id() -> None:
    assert same_source({"source_identity": "a"}, "a", "u1")
    assert not same_source({"source_identity": "a", "source_id": "u1"}, "b", "u1")
    assert same_source({"source_id": "u1"}, "db-x", "u1")  # before identities: the URL id
    assert not same_source({"source_id": "u1"}, "db-x", "u2")
    assert same_source({}, "db-x", "u1")  # nothing recorded: today's rules
    assert same_source({"source_identity": "a"}, None, None)


def _land(root: Path, run: str, columns: list[str], ident: str | None, source_id: str = "u"):
    schema = pa.schema([pa.field(c, pa.string()) for c in columns])
    extra = {} if ident is None else {"source_identity": ident, "source_id": source_id}
    return write_landing_table(
        pa.Table.from_pylist([dict.fromkeys(columns, "x")], schema=schema),
        schema=schema,
        target=LandingTarget(landing_root=root, source="source_db", table_name="users", run_id=run),
        options=LandingOptions(extra_manifest=extra),
    )


def test_a_switch_of_source_is_not_drift(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _land(tmp_path, "2026-11-01", ["id", "preferences"], "B")
    caplog.set_level(logging.WARNING)
    manifest = _land(tmp_path, "2026-11-02", ["id"], "A")  # would be a dropped column
    assert manifest["previous_run_id"] is None
    assert manifest["source_switched_from"] == "B"
    assert any("source switched" in r.getMessage() for r in caplog.records)
    # back to B: compared with B's own last landing, and that one had preferences
    schema = pa.schema([pa.field("id", pa.string())])
    with pytest.raises(SchemaDriftError, match="preferences"):
        check_schema_drift(DriftScope(tmp_path, "source_db", "users", source_identity="B"), schema)
    # drift within one source keeps today's rules, and the operator's switch
    with pytest.raises(SchemaDriftError, match="preferences"):
        _land(tmp_path, "2026-11-03", ["id"], "B")
    fields = check_schema_drift(
        DriftScope(tmp_path, "source_db", "users", source_identity="B"),
        schema,
        accept_drift=["users.preferences"],
    )
    assert fields["accepted_drift"]["dropped"] == [{"name": "preferences", "type": "string"}]


def test_old_manifests_count_as_their_url_id(tmp_path: Path) -> None:
    _land(tmp_path, "2026-11-01", ["id", "preferences"], None)
    old = tmp_path / "source_db" / "users" / "run=2026-11-01" / "_manifest.json"
    import json

    manifest = json.loads(old.read_text())
    manifest["source_id"] = "url-a"
    old.write_text(json.dumps(manifest))
    schema = pa.schema([pa.field("id", pa.string())])
    with pytest.raises(SchemaDriftError):  # same URL as before: the same source
        check_schema_drift(
            DriftScope(tmp_path, "source_db", "users", source_identity="db-a", source_id="url-a"),
            schema,
        )
    fields = check_schema_drift(
        DriftScope(tmp_path, "source_db", "users", source_identity="db-b", source_id="url-b"),
        schema,
    )
    assert fields["previous_run_id"] is None


# -- going back in time ------------------------------------------------------------------


def test_restore_reason_counts_only_a_maximum_older_than_loaded_minus_overlap(
    tmp_path: Path,
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's.db'}")
    loaded = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    config = TableConfig(name="orders", overlap=timedelta(minutes=10))
    with engine.begin() as conn:
        conn.exec_driver_sql("create table orders (id integer, updated_at timestamp)")
        conn.execute(
            sa.text("insert into orders values (1, :at)"),
            {"at": "2026-11-20 12:00:00"},
        )
    with engine.connect() as conn:
        # no new rows: the maximum is the loaded one, and within the overlap is fine too
        assert restore_reason(conn, [config], {"orders": loaded}, None, None) is None
        near = loaded + timedelta(minutes=9)
        assert restore_reason(conn, [config], {"orders": near}, None, None) is None
        later = loaded + timedelta(minutes=11)
        why = restore_reason(conn, [config], {"orders": later}, None, None)
        assert why is not None and "went back in time" in why and "orders.updated_at" in why
        full = TableConfig(name="orders", mode="full")
        assert restore_reason(conn, [full], {"orders": later}, None, None) is None
        assert "timeline changed from 1 to 2" in (restore_reason(conn, [], {}, 1, 2) or "")
        assert restore_reason(conn, [], {}, 1, 1) is None
    engine.dispose()


def test_an_emptied_table_or_one_with_hard_deletes_is_no_evidence_of_a_restore(
    tmp_path: Path,
) -> None:
    """Emptied is not restored: the run stays incremental, and the mass-delete guard
    judges the empty key set (tests/e2e/test_bad_input.py). A `reconcile_deletes` table
    may lose its newest rows to hard deletes (docs/contract.md, "Sources"): no evidence either."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's.db'}")
    loaded = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    orders = TableConfig(name="orders", overlap=timedelta(minutes=10))
    items = TableConfig(name="order_items", overlap=timedelta(minutes=10), reconcile_deletes=True)
    with engine.begin() as conn:
        conn.exec_driver_sql("create table orders (id integer, updated_at timestamp)")
        conn.exec_driver_sql("create table order_items (id integer, updated_at timestamp)")
        conn.execute(
            sa.text("insert into order_items values (1, :at)"), {"at": "2026-11-19 12:00:00"}
        )
    with engine.connect() as conn:
        assert restore_reason(conn, [orders], {"orders": loaded}, None, None) is None
        assert restore_reason(conn, [items], {"order_items": loaded}, None, None) is None
        conn.exec_driver_sql("insert into orders values (1, null)")  # no cursor values
        assert restore_reason(conn, [orders], {"orders": loaded}, None, None) is None
        conn.exec_driver_sql("insert into orders values (2, '2026-11-19 12:00:00')")
        assert "went back in time" in (
            restore_reason(conn, [orders, items], {"orders": loaded}, None, None) or ""
        )
    engine.dispose()


def test_reading_a_replica_keeps_the_primarys_identity(tmp_path: Path) -> None:
    primary = tmp_path / "primary.db"
    sqlite3.connect(primary).execute("create table t (id integer)").connection.commit()
    replica = tmp_path / "replica.db"
    shutil.copy(primary, replica)  # a replica is another server: another own identity
    engine = sa.create_engine(f"sqlite:///{replica}")
    try:
        with engine.connect() as conn:
            on_replica, _ = SourceCheck(f"sqlite:///{primary}", None)(conn, [])
            via_primary, why = SourceCheck(f"sqlite:///{primary}", None, reading_replica=True)(
                conn, []
            )
    finally:
        engine.dispose()
    assert why is None
    assert via_primary["source_identity"] == _identity(f"sqlite:///{primary}")
    assert on_replica["source_identity"] == _identity(f"sqlite:///{replica}")
    assert via_primary["source_identity"] != on_replica["source_identity"]
