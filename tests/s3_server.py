"""A real S3 API server on loopback for tests: moto's server (`moto[server]`), one per
test session, and a fresh bucket per test (`s3_bucket`).

Credentials are throwaway values the server accepts; they are still treated as secrets
by the code under test (the tests grep objects and logs for them).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.servers import free_port

ACCESS_KEY = "AKIANIGHTSHIFTTEST01"
SECRET_KEY = "s3-secret-Zq8v1-never-in-logs"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT

    def client(self):  # noqa: ANN201 (boto3 client)
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def conn_uri(self) -> str:
        """`AIRFLOW_CONN_LANDING`, aws-style."""
        return (
            f"aws://{ACCESS_KEY}:{SECRET_KEY}@/?endpoint_url={self.endpoint}&region_name={REGION}"
        )

    def new_bucket(self) -> str:
        name = f"landing-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def start_s3_server() -> tuple[S3Server, object]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3Server(endpoint=f"http://127.0.0.1:{port}"), server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    info, server = start_s3_server()
    try:
        yield info
    finally:
        server.stop()  # type: ignore[attr-defined]


@pytest.fixture
def s3_landing(
    s3_server: S3Server, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[S3Server, str]]:
    """The landing zone on a fresh bucket of the server: (server, bucket); the local
    stage is `tmp_path/stage`, credentials only through `AIRFLOW_CONN_LANDING`."""
    bucket = s3_server.new_bucket()
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_SESSION_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NIGHTSHIFT_LANDING_URL", f"s3://{bucket}/landing")
    monkeypatch.setenv("NIGHTSHIFT_LANDING_STAGE", str(tmp_path / "stage"))
    monkeypatch.setenv("AIRFLOW_CONN_LANDING", s3_server.conn_uri())
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")
    yield s3_server, bucket
