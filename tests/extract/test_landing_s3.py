"""The landing zone on object storage (extract/object_landing.py) against a real S3 API
server on loopback (moto's server): commit by the object written last, a rerun replaces
a run without readers seeing a mix, a half-written run is never read, credentials never
land in an object or a log line."""

from __future__ import annotations

import json
import logging
import os
import time
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import settings
from extract.landing import (
    LandingOptions,
    LandingTarget,
    SchemaDriftError,
    bound_store,
    previous_manifest,
    write_landing_table,
)
from extract.object_landing import ATTEMPT_PREFIX, COMMIT_NAME
from tests.s3_server import ACCESS_KEY, SECRET_KEY

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("total", pa.decimal128(12, 2)),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _table(n: int, offset: int = 0, schema: pa.Schema = SCHEMA) -> pa.Table:
    data = {
        "id": list(range(offset, offset + n)),
        "total": [Decimal(i) for i in range(n)],
        "updated_at": [1_700_000_000_000_000 + i for i in range(n)],
    }
    return pa.table({f.name: pa.array(data[f.name], type=f.type) for f in schema})


def _land(run_id: str, n: int, offset: int = 0, schema: pa.Schema = SCHEMA, **kw) -> dict:
    return write_landing_table(
        _table(n, offset, schema).to_batches(max_chunksize=4),
        schema=schema,
        target=LandingTarget(settings.landing_dir(), "source_db", "orders", run_id),
        options=LandingOptions(cursor_column="updated_at", rows_per_file=4, **kw),
    )


def _ids(run: Path) -> list[int]:
    files = sorted(run.glob("*.parquet"))
    return sorted(i for f in files for i in pq.read_table(f).column("id").to_pylist())


def _attempts(keys: list[str], run_id: str) -> set[str]:
    return {
        k.split("/")[4]
        for k in keys
        if f"/run={run_id}/" in k and k.split("/")[4].startswith(ATTEMPT_PREFIX)
    }


def test_commit_writes_the_manifest_then_the_commit_and_another_host_reads_it(
    s3_landing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, bucket = s3_landing
    manifest = _land("2026-11-01", 10)
    keys = server.keys(bucket)
    run_keys = [k for k in keys if "/run=2026-11-01/" in k]
    (attempt,) = _attempts(keys, "2026-11-01")
    prefix = "landing/source_db/orders/run=2026-11-01"
    assert f"{prefix}/{COMMIT_NAME}" in run_keys
    assert f"{prefix}/{attempt}/_manifest.json" in run_keys
    assert sum(k.endswith(".parquet") for k in run_keys) == len(manifest["files"]) == 3
    commit = json.loads(
        server.client().get_object(Bucket=bucket, Key=f"{prefix}/{COMMIT_NAME}")["Body"].read()
    )
    assert commit["attempt"] == attempt.removeprefix(ATTEMPT_PREFIX)
    assert commit["checksum_sha256"] == manifest["checksum_sha256"]

    # another host: an empty stage gets exactly the committed run
    monkeypatch.setenv("NIGHTSHIFT_LANDING_STAGE", str(tmp_path / "host-b"))
    stage = settings.landing_dir()
    counts = settings.landing_store().sync_run(stage, "2026-11-01")
    assert counts["downloaded"] == 1
    run = stage / "source_db" / "orders" / "run=2026-11-01"
    assert _ids(run) == list(range(10))
    assert json.loads((run / "_manifest.json").read_text()) == manifest
    # already there: nothing downloaded again
    assert settings.landing_store().sync_run(stage, "2026-11-01")["kept"] == 1


def test_rerun_writes_a_new_attempt_then_switches_the_commit_and_cleans_the_old(
    s3_landing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, bucket = s3_landing
    _land("2026-11-01", 10)
    (first,) = _attempts(server.keys(bucket), "2026-11-01")
    monkeypatch.setenv("NIGHTSHIFT_LANDING_STAGE", str(tmp_path / "host-b"))
    reader = settings.landing_dir()
    settings.landing_store().sync_run(reader, "2026-11-01")
    monkeypatch.setenv("NIGHTSHIFT_LANDING_STAGE", str(tmp_path / "stage"))
    rerun = _land("2026-11-01", 6, offset=100)  # a rerun replaces, never appends
    (second,) = _attempts(server.keys(bucket), "2026-11-01")
    assert second != first  # a new prefix; the old attempt is deleted after the commit
    assert rerun["rows"] == 6
    monkeypatch.setenv("NIGHTSHIFT_LANDING_STAGE", str(reader))
    counts = settings.landing_store().sync_run(reader, "2026-11-01")
    assert counts["downloaded"] == 1
    assert _ids(reader / "source_db" / "orders" / "run=2026-11-01") == list(range(100, 106))


def test_a_half_written_run_without_commit_is_ignored_and_replaced(
    s3_landing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, bucket = s3_landing
    store = settings.landing_store()
    _land("2026-11-01", 5)
    # a writer killed mid-run: data objects of a new attempt, no manifest, no commit;
    # and a first landing of another day killed the same way
    client = server.client()
    for run_id in ("2026-11-01", "2026-11-02"):
        key = f"landing/source_db/orders/run={run_id}/{ATTEMPT_PREFIX}20260101T000000Z-deadbeef/part-00000.parquet"
        client.put_object(Bucket=bucket, Key=key, Body=b"PAR1 half written")
    assert len(store.uncommitted_attempts()) == 2
    # its local copy on the writer's host (landed locally before the upload) is not a run
    stage = settings.landing_dir()
    orphan = stage / "source_db" / "orders" / "run=2026-11-02"
    orphan.mkdir(parents=True)
    (orphan / "part-00000.parquet").write_bytes(b"PAR1 half written")

    fresh = tmp_path / "host-b"
    assert store.sync_run(fresh, "2026-11-02")["downloaded"] == 0
    assert not (fresh / "source_db" / "orders" / "run=2026-11-02").exists()
    assert store.sync_run(stage, "2026-11-02")["removed"] == 1
    assert not orphan.exists()
    assert store.sync_run(fresh, "2026-11-01")["downloaded"] == 1
    assert _ids(fresh / "source_db" / "orders" / "run=2026-11-01") == list(range(5))
    # the drift check's "previous landing" is the committed one, never the half run
    assert previous_manifest(stage, "source_db", "orders")["run_id"] == "2026-11-01"

    _land("2026-11-01", 3, offset=50)  # the rerun commits and cleans the orphan attempt
    _land("2026-11-02", 2, offset=70)
    assert store.uncommitted_attempts() == []
    keys = server.keys(bucket)
    assert len(_attempts(keys, "2026-11-01")) == len(_attempts(keys, "2026-11-02")) == 1
    assert store.sync_run(fresh, "2026-11-01")["downloaded"] == 1
    assert _ids(fresh / "source_db" / "orders" / "run=2026-11-01") == [50, 51, 52]


def test_schema_drift_compares_with_the_committed_runs_of_the_store(s3_landing) -> None:
    _land("2026-11-01", 3)
    narrower = pa.schema([SCHEMA.field("id"), SCHEMA.field("updated_at")])
    with pytest.raises(SchemaDriftError, match="'total'"):
        _land("2026-11-02", 3, schema=narrower)
    server, bucket = s3_landing
    assert not [k for k in server.keys(bucket) if "run=2026-11-02" in k]  # nothing written


def test_side_files_are_pushed_and_pulled(s3_landing, tmp_path: Path) -> None:
    store = settings.landing_store()
    stage = settings.landing_dir()
    record = stage / "source_db" / "_shard_runs" / "run=2026-11-01.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"shards": []}')
    assert store.push_side_files(stage) == 1
    assert store.push_side_files(stage) == 0  # unchanged: not again
    other = tmp_path / "host-b"
    assert store.sync_run(other, "2026-11-01")["side_files"] == 1
    assert (other / "source_db" / "_shard_runs" / "run=2026-11-01.json").read_text() == (
        '{"shards": []}'
    )
    server, bucket = s3_landing
    store.delete_side_file("source_db/_shard_runs/run=2026-11-01.json")  # an extract restarts
    assert not [k for k in server.keys(bucket) if "_shard_runs/run=" in k]
    store.delete_side_file("source_db/_shard_runs/run=2026-11-01.json")  # gone: no error


def test_credentials_come_from_the_connection_and_never_reach_objects_or_logs(
    s3_landing, caplog: pytest.LogCaptureFixture
) -> None:
    server, bucket = s3_landing
    caplog.set_level(logging.DEBUG)
    options = settings.landing_store_options()
    assert options["access_key"] == ACCESS_KEY and options["secret_key"] == SECRET_KEY
    assert options["endpoint_override"] == server.endpoint.removeprefix("http://")
    store = settings.landing_store()
    assert SECRET_KEY not in store.describe() and SECRET_KEY not in repr(store)
    _land("2026-11-01", 3)
    store.push_side_files(settings.landing_dir())
    store.sync_run(settings.landing_dir(), "2026-11-01")
    assert "committed to s3://" in caplog.text  # the landing logged its commit
    assert SECRET_KEY not in caplog.text and ACCESS_KEY not in caplog.text
    caplog.set_level(logging.WARNING)  # the test's own boto3 client logs its requests
    client = server.client()
    keys = server.keys(bucket)
    assert any(k.endswith("_manifest.json") for k in keys)
    for key in keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert SECRET_KEY.encode() not in body and ACCESS_KEY.encode() not in body, key


def test_the_local_landing_zone_stays_the_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NIGHTSHIFT_LANDING_URL", raising=False)
    monkeypatch.setenv("NIGHTSHIFT_DATA_DIR", str(tmp_path))
    assert settings.landing_store() is None
    assert bound_store(settings.landing_dir()) is None
    assert settings.landing_dir() == (tmp_path / "landing").resolve()
    monkeypatch.setenv("NIGHTSHIFT_LANDING_URL", str(tmp_path / "elsewhere"))
    assert settings.landing_dir() == (tmp_path / "elsewhere").resolve()
    assert settings.landing_store() is None


def test_attempt_ids_sort_by_the_time_they_started() -> None:
    import time

    from extract.object_landing import _attempt_id

    ids = []
    for _ in range(5):
        ids.append(_attempt_id())
        time.sleep(0.002)
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_the_quarantine_mirror_pushes_pulls_and_retires(
    s3_landing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, bucket = s3_landing
    monkeypatch.setenv("NIGHTSHIFT_QUARANTINE_URL", f"s3://{bucket}/quarantine")
    monkeypatch.setenv("NIGHTSHIFT_QUARANTINE_STAGE", str(tmp_path / "q-a"))
    store = settings.quarantine_store()
    host_a = settings.quarantine_dir()
    attempt = host_a / "payments_api" / "payments" / "run=2026-11-01" / "attempt=001.jsonl"
    pending = host_a / "_replay" / "pending" / "replay=r1.jsonl"
    for path in (attempt, pending):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"record_key": "p1"}\n')
        # written a while before the push: the store stamps the upload later than the file
        os.utime(path, ns=(time.time_ns() - 10**10, time.time_ns() - 10**10))
    (host_a / "_replay" / ".lock").write_text("")
    assert store.mirror_push(host_a) == {"pushed": 2, "deleted": 0}
    assert store.mirror_push(host_a) == {"pushed": 0, "deleted": 0}
    keys = server.keys(bucket, "quarantine/")
    assert keys == [
        "quarantine/_replay/pending/replay=r1.jsonl",
        "quarantine/payments_api/payments/run=2026-11-01/attempt=001.jsonl",
    ]

    host_b = tmp_path / "q-b"  # the nightly on another host takes the queue
    assert store.mirror_pull(host_b) == 2
    done = host_b / "_replay" / "done" / "replay=r1.jsonl"
    done.parent.mkdir(parents=True)
    (host_b / "_replay" / "pending" / "replay=r1.jsonl").rename(done)
    assert store.mirror_push(host_b) == {"pushed": 1, "deleted": 1}
    assert "quarantine/_replay/done/replay=r1.jsonl" in server.keys(bucket, "quarantine/")
    assert "quarantine/_replay/pending/replay=r1.jsonl" not in server.keys(bucket, "quarantine/")
    assert store.mirror_pull(host_a) == 1  # host A now sees it done
    assert (host_a / "_replay" / "done" / "replay=r1.jsonl").exists()
    assert not (host_a / "_replay" / "pending" / "replay=r1.jsonl").exists()  # retired there
    assert attempt.exists()


def test_retention_prunes_old_runs_in_the_store_commit_first(s3_landing) -> None:
    from datetime import date

    server, bucket = s3_landing
    store = settings.landing_store()
    for day in range(1, 6):
        _land(f"2026-11-0{day}", 2)
    record = settings.landing_dir() / "source_db" / "_shard_runs" / "run=2026-11-01.json"
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    store.push_side_files(settings.landing_dir())
    removed = store.prune_runs(2, date(2026, 11, 5), "2026-11-05")
    assert sorted(removed) == [
        "source_db/_shard_runs/run=2026-11-01.json",
        "source_db/orders/run=2026-11-01",
        "source_db/orders/run=2026-11-02",
        "source_db/orders/run=2026-11-03",
    ]
    assert sorted(store.committed_runs("source_db", "orders")) == ["2026-11-04", "2026-11-05"]
    assert not [
        k
        for k in server.keys(bucket)
        if "2026-11-0" in k and "run=2026-11-0" in k and k.split("run=")[1][:10] < "2026-11-04"
    ]
    assert store.prune_runs(0, date(2026, 11, 5), "2026-11-05") == []  # 0: keep all


def test_credentials_from_the_aws_variables_or_an_encoded_connection(monkeypatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    monkeypatch.delenv("AIRFLOW_CONN_LANDING", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.test")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    options = settings.landing_store_options()
    assert (options["access_key"], options["secret_key"], options["region"]) == (
        "AKIAENV",
        "env-secret",
        "eu-central-1",
    )
    assert (options["endpoint_override"], options["scheme"]) == ("s3.example.test", "https")
    # compose's form: the endpoint URL-encoded, a secret with a '/'
    monkeypatch.setenv(
        "AIRFLOW_CONN_LANDING",
        "aws://user:p%2Fq@/?endpoint_url=http%3A%2F%2Fminio%3A9000&region_name=eu-west-1",
    )
    options = settings.landing_store_options()
    assert (options["access_key"], options["secret_key"], options["region"]) == (
        "user",
        "p/q",
        "eu-west-1",
    )
    assert (options["endpoint_override"], options["scheme"]) == ("minio:9000", "http")
    monkeypatch.setenv("AIRFLOW_CONN_LANDING", "postgresql://u:p@h/db")
    with pytest.raises(settings.ConfigError, match="landing: scheme must be aws"):
        settings.landing_store_options()
