"""PaymentsApiClient against the real demo API (and a mock transport for edge cases)."""

from __future__ import annotations

import logging
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import fields
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from core.http_retry import RetryPolicy
from core.settings import ApiConfig
from demo.api import PAYMENTS_DDL, FaultConfig, create_app, serve_in_thread
from extract.api_client import ApiContractError, ApiError, PaymentsApiClient, _parse_retry_after

_RETRY_FIELDS = {f.name for f in fields(RetryPolicy)}
TOKEN = "client-test-s3cret-token"
START = datetime(2024, 3, 1, tzinfo=UTC)
N = 23


def make_payments_db(path: Path, n: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute(PAYMENTS_DDL)
    for i in range(n):
        ts = (START + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        conn.execute(
            "INSERT INTO payments VALUES (?, ?, ?, 'USD', 'succeeded', 'card', ?, ?)",
            (f"pay_{i:05d}", i, f"{i}.50", ts, ts),
        )
    conn.commit()
    conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "payments.db"
    make_payments_db(path, N)
    return path


def _serve(db: Path, **faults) -> AbstractContextManager[str]:
    return serve_in_thread(create_app(db, TOKEN, FaultConfig(**faults) if faults else None))


def _client(url: str, **kwargs) -> PaymentsApiClient:
    """A client of `url`: short backoffs; RetryPolicy's fields among `kwargs` go to its
    `retry`, the others to the client."""
    retry = {"backoff_base": 0.01, "backoff_cap": 0.05}
    retry.update({k: kwargs.pop(k) for k in list(kwargs) if k in _RETRY_FIELDS})
    return PaymentsApiClient(
        ApiConfig(base_url=url, token=TOKEN), retry=RetryPolicy(**retry), **kwargs
    )


def _stats(url: str) -> dict:
    return httpx.get(url + "/_admin/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()


def _ids(client: PaymentsApiClient, **kwargs) -> list[str]:
    return [r["id"] for page in client.iter_payment_pages(**kwargs) for r in page]


@pytest.fixture
def server(db: Path) -> Iterator[str]:
    with _serve(db) as url:
        yield url


def test_pages_are_followed_to_the_end(server: str) -> None:
    with _client(server) as client:
        pages = list(client.iter_payment_pages(None, limit=5))
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        assert [r["id"] for p in pages for r in p] == [f"pay_{i:05d}" for i in range(N)]
        since = START + timedelta(minutes=20)
        assert _ids(client, updated_since=since, limit=2) == ["pay_00020", "pay_00021", "pay_00022"]
        naive = since.replace(tzinfo=None)  # taken as UTC
        assert _ids(client, updated_since=naive) == ["pay_00020", "pay_00021", "pay_00022"]


def test_fx_rates(server: str) -> None:
    with _client(server) as client:
        body = client.get_fx_rates(date(2024, 1, 31))
    assert body["base"] == "USD" and body["date"] == "2024-01-31"
    assert body["rates"]["USD"] == "1" and "EUR" in body["rates"]


def test_429_retry_after_is_honoured(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="extract.api_client")
    with _serve(db, modes={"rate_limit"}, every=2, retry_after=1) as url:
        with _client(url) as client:
            started = time.monotonic()
            ids = _ids(client, updated_since=None, limit=12)  # 2 pages; the 2nd is rate limited
            elapsed = time.monotonic() - started
        assert ids == [f"pay_{i:05d}" for i in range(N)]
        assert elapsed >= 1.0  # waited Retry-After, not the tiny backoff
        assert _stats(url)["by_status"].get("429") == 1
    retries = [r for r in caplog.records if "status 429" in r.getMessage()]
    assert len(retries) == 1
    assert "attempt 1/8" in retries[0].getMessage() and "1.00s" in retries[0].getMessage()
    assert TOKEN not in caplog.text


def test_5xx_are_retried(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="extract.api_client")
    with _serve(db, modes={"server_error"}, every=2, retry_after=0) as url:
        with _client(url) as client:
            assert _ids(client, updated_since=None, limit=3) == [f"pay_{i:05d}" for i in range(N)]
            assert client.get_fx_rates(date(2024, 1, 1))["date"] == "2024-01-01"
        by_status = _stats(url)["by_status"]
    assert {"500", "502", "503"} <= set(by_status)
    assert "status 502" in caplog.text


def test_slow_page_within_timeout_and_timeout_retried(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="extract.api_client")
    with _serve(db, modes={"slow"}, every=2, slow_seconds=0.6) as url:
        with _client(url, timeout=5) as client:  # slow but in time: no retry
            assert len(_ids(client, updated_since=None, limit=10)) == N
        assert "retrying" not in caplog.text
        with _client(url, timeout=0.2) as client:  # too slow: time out, retry, succeed
            assert len(_ids(client, updated_since=None, limit=10)) == N
        assert "ReadTimeout" in caplog.text


def test_gives_up_after_max_attempts(db: Path) -> None:
    with _serve(db, modes={"server_error"}, every=1, retry_after=0) as url:
        with _client(url, max_attempts=3) as client, pytest.raises(ApiError) as info:
            list(client.iter_payment_pages(None))
        message = str(info.value)
        assert "giving up after 3 attempts" in message
        assert f"{url}/v1/payments?limit=500" in message and "status 503" in message
        assert TOKEN not in message
        assert _stats(url)["requests"] == 3


def test_gives_up_when_retry_after_exceeds_total_time(db: Path) -> None:
    with _serve(db, modes={"rate_limit"}, every=1, retry_after=30) as url:
        with _client(url, max_total_seconds=5) as client, pytest.raises(ApiError) as info:
            started = time.monotonic()
            client.get_fx_rates(date(2024, 1, 1))
        assert time.monotonic() - started < 2  # did not sleep 30 s first
        assert "max_total_seconds" in str(info.value) and info.value.status == 429


def test_connection_errors_are_retried_then_fail() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with _client(f"http://127.0.0.1:{port}", max_attempts=2) as client:
        with pytest.raises(ApiError, match="ConnectError") as info:
            client.get_fx_rates(date(2024, 1, 1))
    assert TOKEN not in str(info.value)


def test_non_retryable_4xx_fails_at_once_without_token(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = PaymentsApiClient(
        ApiConfig(base_url=server, token="wrong-" + TOKEN), retry=RetryPolicy(backoff_base=0.01)
    )
    with bad, pytest.raises(ApiError) as info:
        list(bad.iter_payment_pages(None))
    assert info.value.status == 401
    assert "status 401" in str(info.value) and f"{server}/v1/payments?limit=500" in str(info.value)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)
    with _client(server) as client, pytest.raises(ApiError, match="status 400") as info:
        list(client.iter_payment_pages(None, limit=501))
    assert "limit=501" in str(info.value)
    assert _stats(server)["requests"] == 2  # one request each: no retries
    assert TOKEN not in caplog.text and "retrying" not in caplog.text


def test_token_echoed_by_server_is_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, text=f"forbidden for {request.headers['Authorization']}")

    client = _client("http://api.test", transport=httpx.MockTransport(handler))
    with client, pytest.raises(ApiError) as info:
        client.get_fx_rates(date(2024, 1, 1))
    assert TOKEN not in str(info.value) and "***" in str(info.value)


def test_retry_after_on_503_and_jittered_backoff() -> None:
    answers = iter(
        [
            httpx.Response(503, headers={"Retry-After": "4"}),
            httpx.Response(500),
            httpx.Response(502),
            httpx.Response(200, json={"base": "USD", "date": "2024-01-01", "rates": {"USD": "1"}}),
        ]
    )
    waits: list[float] = []
    client = PaymentsApiClient(
        ApiConfig(base_url="http://api.test", token=TOKEN),
        transport=httpx.MockTransport(lambda request: next(answers)),
        retry=RetryPolicy(backoff_base=1, backoff_cap=30),
        sleep=waits.append,
    )
    with client:
        assert client.get_fx_rates(date(2024, 1, 1))["rates"] == {"USD": "1"}
    assert waits[0] == 4  # Retry-After
    assert 0 <= waits[1] <= 2 and 0 <= waits[2] <= 4  # full jitter: uniform(0, base * 2**n)


@pytest.mark.parametrize(
    "body, why",
    [
        ({"base": "EUR", "date": "2024-01-01", "rates": {"USD": "1"}}, "base"),
        ({"base": "USD", "date": "2024-01-02", "rates": {"USD": "1"}}, "date"),
        ({"base": "USD", "date": "2024-01-01", "rates": []}, "rates"),
        ({"base": "USD", "date": "2024-01-01", "rates": {"EUR": 0.9}}, "EUR"),
    ],
)
def test_fx_rates_response_is_validated(body: dict, why: str) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    with _client("http://api.test", transport=transport) as client:
        with pytest.raises(ApiError, match=why):
            client.get_fx_rates(date(2024, 1, 1))


def test_bad_page_shape_and_stuck_cursor_fail() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"items": []}))
    with _client("http://api.test", transport=transport) as client:
        with pytest.raises(ApiError, match="'data'"):
            list(client.iter_payment_pages(None))
    stuck = httpx.MockTransport(
        lambda r: httpx.Response(200, json={"data": [], "next_cursor": "x"})
    )
    with _client("http://api.test", transport=stuck) as client:
        with pytest.raises(ApiError, match="did not advance"):
            list(client.iter_payment_pages(None))


def test_parse_retry_after() -> None:
    assert _parse_retry_after("3") == 3
    assert _parse_retry_after(None) is None and _parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 55 <= _parse_retry_after(later) <= 61


def test_repr_hides_token(server: str) -> None:
    with _client(server) as client:
        assert TOKEN not in repr(client) and TOKEN not in repr(client.__dict__.get("base_url"))


def test_a_page_without_next_cursor_is_an_error_not_the_last_page(db: Path) -> None:
    with _serve(db, modes=frozenset({"missing_cursor"}), every=2) as url, _client(url) as client:
        with pytest.raises(ApiError, match=r"page 2: no 'next_cursor' key") as caught:
            _ids(client, updated_since=None, limit=5)
    assert "limit=5" in str(caught.value) and TOKEN not in str(caught.value)


def test_endless_cursors_stop_at_the_page_cap_and_the_time_budget(db: Path) -> None:
    with _serve(db, modes=frozenset({"endless_cursor"})) as url, _client(url) as client:
        with pytest.raises(ApiError, match=r"more than max_pages=12 pages"):
            _ids(client, updated_since=None, limit=5, max_pages=12)
        with pytest.raises(ApiError, match=r"more than max_seconds=0"):
            _ids(client, updated_since=None, limit=5, max_seconds=0)


def test_a_page_over_the_limit_or_a_bad_cursor_names_the_page() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("cursor") == "c1":
            return httpx.Response(200, json={"data": [{"id": "x"}] * 3, "next_cursor": 7})
        return httpx.Response(200, json={"data": [{"id": "x"}] * 3, "next_cursor": "c1"})

    config = ApiConfig(base_url="http://api.test", token=TOKEN)
    with PaymentsApiClient(config, transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(ApiError, match=r"page 1: 3 records, more than limit=2"):
            list(client.iter_payment_pages(None, limit=2))
        with pytest.raises(ApiError, match=r"page 2: next_cursor=7 is not a non-empty string"):
            list(client.iter_payment_pages(None, limit=3))


def test_a_page_over_the_limit_by_repeats_of_the_page_before_is_accepted() -> None:
    """The contract lets a page repeat records of the page before: a page of `limit`
    new records plus such repeats is not over the limit; more new records still are."""
    pages = {
        None: ({"data": [{"id": f"p{i}"} for i in range(3)], "next_cursor": "c1"}),
        # the last two of page 1 again, then three new ones: 5 records for limit=3
        "c1": ({"data": [{"id": f"p{i}"} for i in range(1, 6)], "next_cursor": "c2"}),
        # one repeat and four new ones: still over the limit
        "c2": ({"data": [{"id": f"p{i}"} for i in range(5, 10)], "next_cursor": None}),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get("cursor")])

    config = ApiConfig(base_url="http://api.test", token=TOKEN)
    with PaymentsApiClient(config, transport=httpx.MockTransport(answer)) as client:
        got = []
        with pytest.raises(
            ApiError, match=r"page 3: 5 records, more than limit=3 besides 1 repeated"
        ):
            for page in client.iter_payment_pages(None, limit=3):
                got.append([r["id"] for r in page])
    assert got == [["p0", "p1", "p2"], ["p1", "p2", "p3", "p4", "p5"]]


def test_a_non_json_200_names_the_page_and_is_not_retried(db: Path) -> None:
    with _serve(db, modes=frozenset({"html_page"}), every=2) as url, _client(url) as client:
        with pytest.raises(
            ApiContractError, match=r"page 2: status 200 with a body that is not JSON"
        ) as caught:
            _ids(client, updated_since=None, limit=5)
        stats = _stats(url)
    message = str(caught.value)
    assert "'text/html" in message and "<html>" in message and "not retried" in message
    assert "limit=5" in message and TOKEN not in message
    assert stats["requests"] == 2  # page 2 was asked once: no retry
    assert stats["faults"] == {"html_page": 1}
