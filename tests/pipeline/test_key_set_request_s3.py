"""A loader's request for a full key set (extract/key_check.py) reaches an extract on
another host when the landing zone is on object storage (a real S3 API server on
loopback), and goes from the store once met: without it a load that cannot check a
table's deletes would fail every night, its request never seen by the extract."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from core import settings
from extract import key_check
from extract.tables import TableConfig
from pipeline import nightly
from tests.s3_server import s3_landing, s3_server  # noqa: F401
from warehouse import load as warehouse_load

TABLE = "order_items"
REQUEST = f"landing/source_db/{TABLE}__key_ranges/{key_check.REQUEST_NAME}"
CONFIGS = [TableConfig(name="orders"), TableConfig(name=TABLE)]


def _host(monkeypatch: pytest.MonkeyPatch, stage: Path) -> Path:
    monkeypatch.setenv("NIGHTSHIFT_LANDING_STAGE", str(stage))
    return settings.landing_dir()


def test_the_request_travels_through_the_store_and_is_retired_once_met(
    s3_landing,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, bucket = s3_landing
    loader = _host(monkeypatch, tmp_path / "loader-host")
    key_check.request_full_key_set(loader, TABLE, "2026-11-02", [3, 4], "keys differ")
    nightly._push_landing_side_files()  # what load_source_db does on a LoadError
    assert REQUEST in server.keys(bucket)

    extract = _host(monkeypatch, tmp_path / "extract-host")
    assert key_check.full_key_set_requested(extract, TABLE) is None  # not staged yet
    staged = nightly._pull_key_set_requests(CONFIGS)
    request = key_check.full_key_set_requested(extract, TABLE)
    assert request is not None and request["buckets"] == [3, 4]
    assert [p.name for p in staged] == [key_check.REQUEST_NAME]

    nightly._forget_met_key_set_requests(staged)  # not met yet: kept
    assert REQUEST in server.keys(bucket)
    key_check.clear_full_key_set_request(extract, TABLE)  # the full key set landed
    nightly._forget_met_key_set_requests(staged)
    assert REQUEST not in server.keys(bucket)

    _host(monkeypatch, tmp_path / "loader-host")  # the loader's host extracts next time
    assert nightly._pull_key_set_requests(CONFIGS) == []
    assert key_check.full_key_set_requested(loader, TABLE) is None  # met elsewhere: gone


def test_a_failed_load_pushes_its_request(
    s3_landing,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`load_source_db` pushes the side files when the load fails, before re-raising."""
    server, bucket = s3_landing
    landing = settings.landing_dir()

    def failing_load(root: Path, plan) -> dict:
        key_check.request_full_key_set(root, TABLE, plan.run_id, [7], "keys differ")
        raise warehouse_load.LoadError("no landed run holds the keys")

    monkeypatch.setattr(warehouse_load, "load_source_db", failing_load)
    monkeypatch.setattr(nightly, "_landing_synced", lambda *a, **k: landing)
    monkeypatch.setattr(nightly, "_validate_landed", lambda *a, **k: [])
    monkeypatch.setattr(nightly, "_quality_gate", lambda *a, **k: {})
    monkeypatch.setattr(nightly, "_reconcile_source", lambda *a, **k: None)
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WAREHOUSE_PATH", raising=False)
    with pytest.raises(warehouse_load.LoadError):
        nightly.load_source_db.__wrapped__(date(2026, 11, 2))
    assert REQUEST in server.keys(bucket)
