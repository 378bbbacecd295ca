"""Fixtures of the extract tests: the S3 API server on loopback (tests/s3_server.py)."""

from tests.s3_server import s3_landing, s3_server  # noqa: F401
