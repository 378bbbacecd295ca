"""The run files, the report and the Data Docs on object storage (`NIGHTSHIFT_DATA_URL`,
core/run_files.py), against a real S3 API server on loopback (moto's): what one host
writes another reads, nothing lands in the local folders, the default stays local."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from alerting.runs import earlier_conditions, record_conditions
from core import run_files, settings
from pipeline.run_metrics import read_steps, timed
from tests.s3_server import SECRET_KEY, S3Server, s3_server  # noqa: F401

DAY = date(2026, 3, 7)


@timed
def load_orders(business_date: date) -> dict[str, int]:
    return {"orders": 3}


@timed
def failing_step(business_date: date) -> None:
    raise RuntimeError("orders: 2 rows broke the key\nsecond line")


@pytest.fixture
def store(
    s3_server: S3Server,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[S3Server, str]]:
    """`NIGHTSHIFT_DATA_URL` on a fresh bucket, credentials only in the connection."""
    bucket = s3_server.new_bucket()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("NIGHTSHIFT_LANDING_URL", "NIGHTSHIFT_QUARANTINE_URL", "NIGHTSHIFT_DATA_STAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NIGHTSHIFT_DATA_URL", f"s3://{bucket}/shared")
    monkeypatch.setenv("AIRFLOW_CONN_LANDING", s3_server.conn_uri())
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    on_host(monkeypatch, tmp_path, "host-a")
    yield s3_server, bucket


def files(s3: S3Server, bucket: str, prefix: str = "") -> list[str]:
    """The objects under `prefix` (not the empty folder markers pyarrow leaves)."""
    return [k for k in s3.keys(bucket, prefix) if not k.endswith("/")]


def on_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Path:
    """Another worker: its own, empty data folder."""
    data = tmp_path / name
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(data))
    return data


def test_step_files_are_one_object_per_step_read_from_any_host(
    store: tuple[S3Server, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3, bucket = store
    load_orders(DAY)
    on_host(monkeypatch, tmp_path, "host-b")
    with pytest.raises(RuntimeError):
        failing_step(DAY)
    assert files(s3, bucket, "shared/runs/") == [
        "shared/runs/2026-03-07/steps/failing_step.json",
        "shared/runs/2026-03-07/steps/load_orders.json",
    ]
    on_host(monkeypatch, tmp_path, "host-c")  # the publish step, on a third host
    steps = {s["task"]: s for s in read_steps(DAY.isoformat())}
    assert steps["load_orders"]["status"] == "success"
    assert steps["load_orders"]["summary"] == {"orders": 3}
    assert steps["failing_step"] == {**steps["failing_step"], "status": "failed"}
    assert steps["failing_step"]["error"] == "orders: 2 rows broke the key"
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "a run file was written locally"


def test_alert_streaks_are_read_across_hosts(
    store: tuple[S3Server, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3, bucket = store
    record_conditions("2026-03-05", ["deadline"], ["deadline"])
    on_host(monkeypatch, tmp_path, "host-b")
    record_conditions("2026-03-06", ["deadline", "quality"], [])
    record_conditions("2026-03-06", ["quality"], ["quality:orders"])  # keeps `deadline`
    on_host(monkeypatch, tmp_path, "host-c")
    assert earlier_conditions("2026-03-07") == [
        {"deadline": {"deadline"}},
        {"deadline": set(), "quality": {"quality:orders"}},
    ]
    assert earlier_conditions("2026-03-06") == [{"deadline": {"deadline"}}]
    assert "shared/runs/2026-03-06/alerts.json" in s3.keys(bucket)
    assert not (tmp_path / "host-b" / "runs").exists()


def test_the_report_folder_is_shared_through_the_store(
    store: tuple[S3Server, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3, bucket = store
    with run_files.mirrored_report() as folder:
        assert folder == tmp_path / "host-a" / "data-stage" / "report"
        (folder / "2026-03-06.html").write_text("day 6")
    on_host(monkeypatch, tmp_path, "host-b")
    with run_files.mirrored_report() as folder:
        assert (folder / "2026-03-06.html").read_text() == "day 6"  # host A's page
        (folder / "2026-03-07.html").write_text("day 7")
        (folder / "2026-03-06.html").unlink()  # retention pruned it
    assert files(s3, bucket, "shared/report/") == ["shared/report/2026-03-07.html"]
    assert not (tmp_path / "host-b" / "report").exists()


def test_a_published_docs_site_replaces_the_previous_one(
    store: tuple[S3Server, str], tmp_path: Path
) -> None:
    s3, bucket = store
    site = tmp_path / "site"
    (site / "validations").mkdir(parents=True)
    (site / "index.html").write_text("v1")
    (site / "validations" / "old.html").write_text("old")
    assert run_files.publish_docs(site, "load") == f"s3://{bucket}/shared/docs/quality/load"
    (site / "validations" / "old.html").unlink()
    (site / "index.html").write_text("v2")
    (site / ".store-mirror.json").write_text("{}")  # hidden files are not published
    run_files.publish_docs(site, "load")
    prefix = "shared/docs/quality/load/"
    assert files(s3, bucket, prefix) == [prefix + "index.html"]
    body = s3.client().get_object(Bucket=bucket, Key=prefix + "index.html")["Body"].read()
    assert body == b"v2"
    assert run_files.docs_location("load") == f"s3://{bucket}/{prefix.rstrip('/')}"


def test_retention_prunes_old_run_folders_on_the_store(store: tuple[S3Server, str]) -> None:
    s3, bucket = store
    for day in ("2026-02-01", "2026-02-02", "2026-03-06", "2026-03-07"):
        run_files.write(day, "steps/x.json", b"{}")
    removed = run_files.prune_store(30, date(2026, 3, 7), run_id="2026-02-01")
    assert removed == [f"s3://{bucket}/shared/runs/2026-02-02"]  # the running night stays
    assert {k.split("/")[2] for k in files(s3, bucket, "shared/runs/")} == {
        "2026-02-01",
        "2026-03-06",
        "2026-03-07",
    }
    for key in s3.keys(bucket):
        assert (
            SECRET_KEY.encode() not in s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        )


def test_one_url_puts_every_shared_folder_on_the_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path / "data"))
    for name in ("NIGHTSHIFT_LANDING_URL", "NIGHTSHIFT_QUARANTINE_URL", "NIGHTSHIFT_DATA_STAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NIGHTSHIFT_DATA_URL", "s3://bucket/night/")
    assert settings.landing_url() == "s3://bucket/night/landing"
    assert settings.landing_dir() == tmp_path / "data" / "landing-stage"
    assert settings.quarantine_dir() == tmp_path / "data" / "quarantine-stage"
    assert settings.report_dir() == tmp_path / "data" / "data-stage" / "report"
    assert settings.quality_docs_dir() == tmp_path / "data" / "data-stage" / "docs" / "quality"
    assert run_files.report_location(DAY) == "s3://bucket/night/report/2026-03-07.html"
    monkeypatch.setenv("NIGHTSHIFT_LANDING_URL", "s3://other/landing")  # a kind's own URL wins
    assert settings.landing_url() == "s3://other/landing"
    monkeypatch.setenv("NIGHTSHIFT_DATA_URL", "/mnt/shared")
    with pytest.raises(settings.ConfigError, match=r"NIGHTSHIFT_DATA_URL='/mnt/shared'.*s3://"):
        settings.data_url()


def test_unset_the_run_files_stay_in_the_local_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("NIGHTSHIFT_DATA_URL", raising=False)
    load_orders(DAY)
    record = json.loads(
        (tmp_path / "runs" / "2026-03-07" / "steps" / "load_orders.json").read_text()
    )
    assert record["summary"] == {"orders": 3}
    assert run_files.publish_docs(tmp_path / "site", "load") == str(tmp_path / "site")
    assert run_files.prune_store(30, DAY, "2026-03-07") == []
    assert run_files.report_location(DAY) == str(settings.report_dir() / "2026-03-07.html")
