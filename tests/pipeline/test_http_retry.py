"""The one HTTP retry policy (core.http_retry): what is retried, how long it waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from core import http_retry
from core.http_retry import RetriesExhausted, Retryable, RetryPolicy

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "status, retried",
    [(200, False), (301, False), (400, False), (401, False), (403, False), (404, False)]
    + [(409, False), (422, False), (408, True), (429, True), (500, True), (502, True)]
    + [(503, True), (504, True), (501, False), (505, False)],
)
def test_what_is_retried(status: int, retried: bool) -> None:
    assert http_retry.is_retryable_status(status) is retried
    failure = http_retry.retryable_response(status, {}, RetryPolicy())
    assert (failure is not None) is retried


def test_retry_after_seconds_and_http_date() -> None:
    parse = http_retry.parse_retry_after
    assert parse("7", now=lambda: NOW) == 7 and parse(" 1.5 ", now=lambda: NOW) == 1.5
    assert parse("-3", now=lambda: NOW) == 0
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse(later, now=lambda: NOW) == 90
    earlier = format_datetime(NOW - timedelta(seconds=90), usegmt=True)
    assert parse(earlier, now=lambda: NOW) == 0
    for unusable in (None, "", "soon", "nan", "Mon, 99 Foo 2026"):
        assert parse(unusable, now=lambda: NOW) is None


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(retry_after_cap=30)
    failure = http_retry.retryable_response(429, {"Retry-After": "3600"}, policy)
    assert failure is not None and failure.retry_after == 30 and failure.status == 429
    date = format_datetime(NOW + timedelta(seconds=10), usegmt=True)
    failure = http_retry.retryable_response(503, {"Retry-After": date}, policy, now=lambda: NOW)
    assert failure is not None and failure.retry_after == 10


def _failing(answers: list[Retryable | str]):
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        answer = answers[len(calls) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return attempt, calls


def test_jittered_exponential_backoff_then_success() -> None:
    attempt, calls = _failing([Retryable("status 500")] * 5 + ["ok"])
    waits: list[float] = []
    seen: list[tuple[str, int, float]] = []
    policy = RetryPolicy(max_attempts=8, backoff_base=1, backoff_cap=6)
    result = http_retry.call(
        attempt,
        policy,
        sleep=waits.append,
        on_retry=lambda failure, n, wait: seen.append((failure.reason, n, wait)),
    )
    assert result == "ok" and len(calls) == 6 and len(waits) == 5
    for n, wait in enumerate(waits, start=1):  # full jitter: uniform(0, min(cap, base*2**(n-1)))
        assert 0 <= wait <= min(6, 2 ** (n - 1))
    assert [(r, n) for r, n, _ in seen] == [("status 500", n) for n in range(1, 6)]
    assert [w for _, _, w in seen] == waits


def test_jitter_spreads_the_waits() -> None:
    waits: list[float] = []
    for _ in range(20):
        attempt, _calls = _failing([Retryable("x"), "ok"])
        http_retry.call(attempt, RetryPolicy(backoff_base=10, backoff_cap=10), sleep=waits.append)
    assert len(set(waits)) > 1  # not a fixed interval


def test_retry_after_replaces_the_backoff() -> None:
    attempt, _calls = _failing([Retryable("status 429", status=429, retry_after=4), "ok"])
    waits: list[float] = []
    http_retry.call(attempt, RetryPolicy(backoff_base=0.001), sleep=waits.append)
    assert waits == [4]


def test_gives_up_after_max_attempts() -> None:
    attempt, calls = _failing([Retryable(f"status 50{i}", status=500 + i) for i in range(5)])
    with pytest.raises(RetriesExhausted) as info:
        http_retry.call(attempt, RetryPolicy(max_attempts=3), sleep=lambda s: None)
    assert len(calls) == 3 and info.value.why == "attempts" and info.value.attempts == 3
    assert info.value.last.status == 502
    assert "giving up after 3 attempts" in str(info.value) and "status 502" in str(info.value)


def test_gives_up_before_a_wait_that_passes_the_time_budget() -> None:
    attempt, calls = _failing([Retryable("status 429", status=429, retry_after=30), "ok"])
    waits: list[float] = []
    with pytest.raises(RetriesExhausted) as info:
        http_retry.call(attempt, RetryPolicy(max_total_seconds=5), sleep=waits.append)
    assert len(calls) == 1 and waits == []  # no 30 s sleep first
    assert info.value.why == "time" and info.value.wait == 30
    assert "max_total_seconds=5" in str(info.value)


def test_other_errors_are_not_retried() -> None:
    attempt, calls = _failing([ValueError("a 404"), "ok"])
    with pytest.raises(ValueError, match="a 404"):
        http_retry.call(attempt, RetryPolicy(), sleep=lambda s: None)
    assert len(calls) == 1


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="retry_after_cap must be >= 0"):
        RetryPolicy(retry_after_cap=-1)
