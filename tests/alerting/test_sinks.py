"""Sinks against a real HTTP receiver on loopback: payload shape, retries, dead webhook."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alerting.sinks import (
    WEBHOOK_RETRY,
    Alert,
    AlertSink,
    LogSink,
    WebhookSink,
    send_all,
    sinks_from_config,
    webhook_url_from_uri,
)
from core.http_retry import RetryPolicy
from core.settings import ConfigError

TOKEN_PATH = "/services/T000/B000/s3cr3tT0k3n"


class Receiver:
    """A webhook on 127.0.0.1: records every request, answers from a script of statuses.

    `script` entries are (status, delay_s) or (status, delay_s, headers); once exhausted
    every answer is (200, 0).
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[tuple[int, float]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    status, delay, *extra = receiver.script.pop(0) if receiver.script else (200, 0)
                    receiver.requests[-1]["at"] = time.monotonic()
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    for name, value in (extra[0] if extra else {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(b"ok" if status < 400 else b"error")
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.url = self.base_url + TOKEN_PATH
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def json_bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@contextlib.contextmanager
def receiver_running() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiver_running() as r:
        yield r


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


ALERT = Alert(
    severity="critical",
    title="Task failed: nightly_sales.load_warehouse",
    text="dag nightly_sales, task load_warehouse, run r1, try 3/3: OSError: disk full",
    dag_id="nightly_sales",
    task_id="load_warehouse",
    run_id="r1",
    fields={"try": "3/3", "error": "OSError: disk full"},
)


def test_webhook_posts_slack_shaped_json(receiver: Receiver) -> None:
    WebhookSink(receiver.url, retry=replace(WEBHOOK_RETRY, backoff_base=0)).send(ALERT)

    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request["path"] == TOKEN_PATH
    assert request["headers"]["Content-Type"] == "application/json"
    payload = json.loads(request["body"])
    # Slack requires a plain `text` fallback next to the blocks
    assert "load_warehouse" in payload["text"] and "OSError: disk full" in payload["text"]
    assert payload["text"].startswith("[CRITICAL] Task failed")
    types = [block["type"] for block in payload["blocks"]]
    assert types[0] == "header" and "section" in types and types[-1] == "context"
    assert payload["blocks"][0]["text"] == {"type": "plain_text", "text": ALERT.title}
    section_text = payload["blocks"][1]["text"]["text"]
    assert ALERT.text in section_text
    assert "`nightly_sales`" in payload["blocks"][-1]["elements"][0]["text"]


def test_webhook_retries_after_500_then_succeeds(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [(500, 0.0), (503, 0.0)]
    caplog.set_level(logging.DEBUG)
    caplog.set_level(
        logging.DEBUG, logger="httpx"
    )  # Airflow sets it to WARN; plain Python does not

    WebhookSink(receiver.url, retry=replace(WEBHOOK_RETRY, max_attempts=3, backoff_base=0.01)).send(
        ALERT
    )

    assert len(receiver.requests) == 3
    assert len({r["body"] for r in receiver.requests}) == 1  # the same message each time
    assert "attempt 1/3 failed (HTTP 500" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "HTTP Request: POST http://127.0.0.1" in caplog.text  # httpx logged, masked
    assert "s3cr3tT0k3n" not in caplog.text


def test_webhook_retries_after_timeout(receiver: Receiver) -> None:
    receiver.script = [(200, 1.0)]  # first answer comes too late

    started = time.monotonic()
    WebhookSink(
        receiver.url, timeout=0.3, retry=replace(WEBHOOK_RETRY, max_attempts=2, backoff_base=0.01)
    ).send(ALERT)

    assert len(receiver.requests) == 2
    assert time.monotonic() - started < 5


def test_webhook_gives_up_after_max_attempts_without_raising(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [(500, 0.0)] * 5

    WebhookSink(receiver.url, retry=replace(WEBHOOK_RETRY, max_attempts=2, backoff_base=0.01)).send(
        ALERT
    )

    assert len(receiver.requests) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "failed after 2 attempts (HTTP 500" in errors[0]
    assert "s3cr3tT0k3n" not in caplog.text


def test_webhook_client_error_is_not_retried(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [(404, 0.0)]

    WebhookSink(receiver.url, retry=replace(WEBHOOK_RETRY, max_attempts=3, backoff_base=0.01)).send(
        ALERT
    )

    assert len(receiver.requests) == 1
    assert "not retried" in caplog.text


def test_webhook_honours_retry_after_seconds(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [(429, 0.0, {"Retry-After": "1"})]
    caplog.set_level(logging.WARNING, logger="alerting.sinks")

    WebhookSink(receiver.url, retry=replace(WEBHOOK_RETRY, max_attempts=3, backoff_base=0.01)).send(
        ALERT
    )

    assert len(receiver.requests) == 2  # the 429, then the 200
    assert receiver.requests[1]["at"] - receiver.requests[0]["at"] >= 0.95  # not 0.01 s
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1
    assert "attempt 1/3 failed (HTTP 429" in retries[0]
    assert "retrying in 1.00s (Retry-After)" in retries[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_webhook_honours_an_http_date_retry_after_up_to_its_cap(receiver: Receiver) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    receiver.script = [(503, 0.0, {"Retry-After": later}), (429, 0.0, {"Retry-After": "3600"})]
    waits: list[float] = []

    WebhookSink(
        receiver.url,
        sleep=waits.append,
        retry=replace(WEBHOOK_RETRY, max_attempts=3, backoff_base=0.01, retry_after_cap=30),
    ).send(ALERT)

    assert len(receiver.requests) == 3
    assert waits == [30, 30]  # 60 s and an hour asked; both capped at 30


def test_webhook_gives_up_when_retry_after_passes_its_time_budget(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [(429, 0.0, {"Retry-After": "20"})]
    waits: list[float] = []

    WebhookSink(
        receiver.url, sleep=waits.append, retry=replace(WEBHOOK_RETRY, max_total_seconds=10)
    ).send(ALERT)

    assert len(receiver.requests) == 1 and waits == []  # did not wait 20 s first
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "failed after 1 attempts (HTTP 429" in errors[0]
    assert "max_total_seconds=10" in errors[0]


def test_webhook_408_is_retried_but_403_is_not(receiver: Receiver) -> None:
    receiver.script = [(408, 0.0), (403, 0.0)]

    WebhookSink(receiver.url, retry=replace(WEBHOOK_RETRY, max_attempts=3, backoff_base=0.01)).send(
        ALERT
    )

    assert len(receiver.requests) == 2  # 408 retried; 403 final


def test_dead_webhook_does_not_raise_and_logs_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")
    port = closed_port()
    url = f"http://127.0.0.1:{port}{TOKEN_PATH}?token=qu3ryS3cr3t"
    sink = WebhookSink(
        url, timeout=2, retry=replace(WEBHOOK_RETRY, max_attempts=2, backoff_base=0.01)
    )

    sink.send(ALERT)  # must not raise

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "ConnectError" in errors[0] and "failed after 2 attempts" in errors[0]
    assert f"http://127.0.0.1:{port}/***" in errors[0]  # where it went, not the secret
    assert "s3cr3tT0k3n" not in caplog.text and "qu3ryS3cr3t" not in caplog.text
    assert "s3cr3tT0k3n" not in repr(sink)


def test_log_sink_levels(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="alerting")
    sink = LogSink()
    for severity in ("critical", "warning", "info"):
        sink.send(Alert(severity=severity, title="t", text=f"{severity} text", run_id="r1"))

    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "alerting"]
    assert levels == [
        (logging.ERROR, "ALERT [CRITICAL] t (run=r1): critical text"),
        (logging.WARNING, "ALERT [WARNING] t (run=r1): warning text"),
        (logging.INFO, "ALERT [INFO] t (run=r1): info text"),
    ]


def test_alert_rejects_unknown_severity() -> None:
    with pytest.raises(ValueError, match="'fatal' is not one of critical, warning, info"):
        Alert(severity="fatal", title="t", text="x")  # type: ignore[arg-type]


def test_send_all_keeps_going_when_a_sink_raises(receiver: Receiver) -> None:
    class Broken:
        def send(self, alert: Alert) -> None:
            raise RuntimeError("boom")

    sinks: list[AlertSink] = [
        Broken(),
        WebhookSink(receiver.url, retry=replace(WEBHOOK_RETRY, backoff_base=0)),
    ]
    assert send_all([ALERT, ALERT], sinks) == 2
    assert len(receiver.requests) == 2


def test_sinks_from_config_without_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_ALERTS_WEBHOOK", raising=False)
    monkeypatch.setenv("NIGHTSHIFT_NO_AIRFLOW_LOOKUP", "1")

    sinks = sinks_from_config()

    assert [type(s) for s in sinks] == [LogSink]


def test_sinks_from_config_with_webhook(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_WEBHOOK", receiver.url + "?channel=ops")

    sinks = sinks_from_config()

    assert [type(s) for s in sinks] == [LogSink, WebhookSink]
    assert sinks[1].url == receiver.url + "?channel=ops"  # type: ignore[attr-defined]
    send_all([ALERT], sinks)
    assert receiver.requests[0]["path"] == TOKEN_PATH + "?channel=ops"


def test_sinks_from_config_bad_uri_keeps_the_log_sink(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_WEBHOOK", "slack://hooks/T/B/s3cr3tT0k3n")

    sinks = sinks_from_config()

    assert [type(s) for s in sinks] == [LogSink]
    assert "webhook disabled" in caplog.text and "s3cr3tT0k3n" not in caplog.text


@pytest.mark.parametrize(
    ("uri", "url"),
    [
        # AIRFLOW_CONN_ALERTS_WEBHOOK as written: kept exactly
        (
            "https://hooks.slack.com/services/T/B/X",
            "https://hooks.slack.com/services/T/B/X",
        ),
        ("http://127.0.0.1:8080/hook/abc?x=1&y=", "http://127.0.0.1:8080/hook/abc?x=1&y="),
        ("https://user:pw@example.com:8443/p", "https://user:pw@example.com:8443/p"),
        # what Airflow's Connection.get_uri() makes of a connection defined in the UI/DB
        ("http://hooks.slack.com/services%2FT%2FB%2FX", "http://hooks.slack.com/services/T/B/X"),
        (
            "http://https://hooks.slack.com%2Fservices%2FT%2FB%2FX",
            "https://hooks.slack.com/services/T/B/X",
        ),
        (
            "http://127.0.0.1:8080/hook%2Fabc?__extra__=%7B%22x%22%3A+1%7D",
            "http://127.0.0.1:8080/hook/abc?x=1",
        ),
    ],
)
def test_webhook_url_from_uri(uri: str, url: str) -> None:
    assert webhook_url_from_uri(uri) == url


def test_webhook_url_from_airflow_connection_round_trip() -> None:
    from airflow.models.connection import Connection

    original = "https://hooks.slack.com/services/T/B/X"
    for conn in (
        Connection(conn_id="alerts_webhook", uri=original),
        Connection(conn_id="alerts_webhook", conn_type="http", host=original),
    ):
        assert webhook_url_from_uri(conn.get_uri()) == original


def test_webhook_url_from_uri_rejects_other_schemes() -> None:
    with pytest.raises(ConfigError, match="expected http"):
        webhook_url_from_uri("ftp://example.com/x")


def test_webhook_retries_a_minute_at_most_and_config_sets_its_attempts(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """An alert callback must not hold its task: 3 attempts within 60 s, backoff from 1 s
    capped at 10 s, 30 s per Retry-After; `sinks_from_config` changes the attempts only."""
    expected = RetryPolicy(
        max_attempts=3,
        max_total_seconds=60.0,
        backoff_base=1.0,
        backoff_cap=10.0,
        retry_after_cap=30.0,
    )
    assert WebhookSink(receiver.url).policy == expected
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_WEBHOOK", receiver.url)
    [_, webhook] = sinks_from_config(max_attempts=5)
    assert webhook.policy == replace(expected, max_attempts=5)  # type: ignore[attr-defined]
