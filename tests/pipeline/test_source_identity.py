"""The source's identity comes from the database itself, end to end with the plain runner.

- switching A -> B (B's `users` carries an extra column) -> A in one data dir publishes,
  each time, exactly what a fresh data dir publishes from that source, and the switch
  back is logged as a switch, not refused as schema drift; a switch that would delete
  much of a table stops at the mass-delete guard until the operator allows it;
- the same database reached through a URL with connection options is the same source:
  the next run is incremental;
- a source restored to an earlier state at the same URL (same identity) is noticed: the
  run takes the full re-extract and rebuild path, and publishes what a fresh data dir
  publishes from the restored source; a full path that would delete too much stops at
  the mass-delete guard until the operator allows it.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from demo.run import running_api
from extract.landing import read_manifest
from pipeline import nightly
from tests.pipeline.test_source_switch import DAY, _run, _source, _tables
from warehouse.guards import MassDeleteError


@pytest.fixture(autouse=True)
def _plain_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    monkeypatch.delenv("WAREHOUSE_PATH", raising=False)
    monkeypatch.delenv("REPORT_TZ", raising=False)


def _run_url(
    monkeypatch: pytest.MonkeyPatch,
    data: Path,
    url: str,
    payments: Path,
    *,
    allow_mass_delete: bool = False,
) -> Path:
    """`_run` with any source URL (and the operator's mass-delete override)."""
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(data))
    monkeypatch.setenv("AIRFLOW_CONN_SOURCE_DB", url)
    with running_api(payments, token="tok") as api_uri:
        monkeypatch.setenv("AIRFLOW_CONN_PAYMENTS_API", api_uri)
        nightly.run_all(DAY, allow_mass_delete=allow_mass_delete)
    return data / "warehouse.duckdb"


def _orders_manifest(data: Path) -> dict:
    return read_manifest(data / "landing", "source_db", "orders", nightly.run_id_for(DAY))


def test_switch_a_b_a_publishes_what_a_fresh_data_dir_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _source(tmp_path, "a", seed=1, end=DAY)
    b = _source(tmp_path, "b", seed=2, end=date(2026, 11, 18))  # older: below A's watermarks
    con = sqlite3.connect(b[0])  # B's users carry a column A's do not (the contract allows)
    con.execute("alter table users add column preferences text")
    con.execute("update users set preferences = 'dark'")
    con.execute("delete from order_items where id % 5 = 0")  # B lacks a fifth of A's items
    con.commit()
    con.close()

    fresh_a = _tables(_run(monkeypatch, tmp_path / "fresh-a", *a))
    fresh_b = _tables(_run(monkeypatch, tmp_path / "fresh-b", *b))
    assert fresh_a != fresh_b, "the two sources must differ for this test to mean anything"

    data = tmp_path / "switched"
    assert _tables(_run(monkeypatch, data, *a)) == fresh_a
    # B lacks a fifth of A's order_items: the switch is guarded like any full path, and
    # says so; the operator's override lets it through
    with pytest.raises(MassDeleteError, match="is not the database the warehouse was loaded"):
        _run(monkeypatch, data, *b)
    assert _tables(data / "warehouse.duckdb") == fresh_a
    b_url = f"sqlite:///{b[0]}"
    assert _tables(_run_url(monkeypatch, data, b_url, b[1], allow_mass_delete=True)) == fresh_b
    assert _orders_manifest(data)["source_changed"] is True
    b_identity = _orders_manifest(data)["source_identity"]
    a_url = f"sqlite:///{a[0]}"  # back to A: no SchemaDriftError
    assert _tables(_run_url(monkeypatch, data, a_url, a[1], allow_mass_delete=True)) == fresh_a
    manifest = _orders_manifest(data)
    assert manifest["source_changed"] is True
    assert manifest["source_identity"].startswith("sqlite:")
    assert manifest["source_identity"] != b_identity
    assert "is not the database the warehouse was loaded from" in manifest["source_change_reason"]
    users = read_manifest(data / "landing", "source_db", "users", nightly.run_id_for(DAY))
    assert users["source_switched_from"] == b_identity  # a switch, not drift
    assert "accepted_drift" not in users


def test_connection_options_do_not_make_another_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_database: str
) -> None:
    from demo.generator import generate

    payments = tmp_path / "payments.db"
    generate(
        pg_database,
        seed=3,
        days=4,
        end_date=DAY,
        orders_per_day=25,
        payments_db=payments,
        if_exists="replace",
    )
    data = tmp_path / "data"
    plain = sa.make_url(pg_database).render_as_string(hide_password=False)
    _run_url(monkeypatch, data, plain, payments)
    first = _orders_manifest(data)
    assert first["mode"] == "incremental" and first["window_start"] is None

    with_options = (
        sa.make_url(pg_database)
        .update_query_dict({"sslmode": "disable", "connect_timeout": "5"})
        .render_as_string(hide_password=False)
    )
    _run_url(monkeypatch, data, with_options, payments)
    second = _orders_manifest(data)
    assert second["source_identity"] == first["source_identity"]
    assert second["source_id"] != first["source_id"]  # the URL-derived id did change
    assert second["mode"] == "incremental"
    assert second["window_start"] is not None  # a window after the first run's watermark
    assert "source_changed" not in second


def test_a_restored_source_takes_the_full_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, payments = _source(tmp_path, "a", seed=4, end=DAY)
    backup = tmp_path / "a-backup.db"
    shutil.copyfile(source, backup)  # the source as it was before the next changes
    data = tmp_path / "data"
    _run(monkeypatch, data, source, payments)

    con = sqlite3.connect(source)  # the source moves on: an order changes an hour later
    newest = con.execute("select max(updated_at) from orders").fetchone()[0]
    con.execute(
        "update orders set status = 'cancelled', updated_at = datetime(?, '+1 hour') "
        "where id = (select max(id) from orders)",
        (newest,),
    )
    con.commit()
    con.close()
    _run(monkeypatch, data, source, payments)
    assert _orders_manifest(data)["mode"] == "incremental"

    shutil.copyfile(backup, source)  # restored in place: the same file, the same identity
    identity = _orders_manifest(data)["source_identity"]
    restored = _tables(_run(monkeypatch, data, source, payments))
    manifest = _orders_manifest(data)
    assert manifest["source_identity"] == identity  # the identity alone would not tell
    assert manifest["mode"] == "full" and manifest["source_changed"] is True
    assert "went back in time: newest orders.updated_at" in manifest["source_change_reason"]
    assert restored == _tables(_run(monkeypatch, tmp_path / "fresh", backup, payments))


def test_a_restore_that_would_delete_many_rows_stops_until_the_operator_allows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full path a restore takes is still guarded: orders added after the backup would
    be deleted by the restored key set, so the run stops before the merge, naming why it
    read in full; ALLOW_MASS_DELETE (`allow_mass_delete`) is the only way on, and then it
    publishes what a fresh data dir publishes from the backup."""
    source, payments = _source(tmp_path, "a", seed=5, end=DAY)
    backup = tmp_path / "a-backup.db"
    shutil.copyfile(source, backup)
    data = tmp_path / "data"
    _run(monkeypatch, data, source, payments)

    con = sqlite3.connect(source)  # 30 new orders an hour later, then a restore loses them
    newest = con.execute("select max(updated_at) from orders").fetchone()[0]
    con.execute("create temp table more as select * from orders order by id limit 30")
    con.execute("update more set id = id + 100000, updated_at = datetime(?, '+1 hour')", (newest,))
    con.execute("insert into orders select * from more")
    con.commit()
    con.close()
    _run(monkeypatch, data, source, payments)
    assert _orders_manifest(data)["mode"] == "incremental"
    before = _tables(data / "warehouse.duckdb")

    shutil.copyfile(backup, source)
    with pytest.raises(MassDeleteError) as stopped:
        _run(monkeypatch, data, source, payments)
    message = str(stopped.value)
    assert "raw.orders: this run would delete 30 of" in message
    assert "read the source in full because the source went back in time" in message
    assert "ALLOW_MASS_DELETE=1" in message
    assert _tables(data / "warehouse.duckdb") == before  # nothing merged, nothing published

    url = f"sqlite:///{source}"
    allowed = _tables(_run_url(monkeypatch, data, url, payments, allow_mass_delete=True))
    assert allowed == _tables(_run(monkeypatch, tmp_path / "fresh", backup, payments))
