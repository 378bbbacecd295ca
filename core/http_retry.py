"""The one retry policy of every HTTP call (the payments API client, the webhook alert sink).

Built on tenacity: exponential backoff with full jitter (`uniform(0, min(cap, base * 2**n))`),
at most `max_attempts` attempts and `max_total_seconds` in all (a wait that would pass the
budget gives up at once instead of sleeping first). Retried: connection errors and
timeouts, 408, 429 and 5xx (but 501 and 505, which do not change). A `Retry-After` header
(delta-seconds or an HTTP-date) replaces the backoff, capped at `retry_after_cap`. Any
other 4xx is never retried.

A caller writes one attempt: it returns the result, raises `Retryable` for a failure worth
another try (`retryable_response` builds one from a response), or raises anything else to
stop at once. `call` runs the attempts and raises `RetriesExhausted` when the policy gives
up; `sleep` and `now` (the wall clock an HTTP-date is measured against) are injectable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol, TypeVar

import tenacity

T = TypeVar("T")

_NOT_RETRIED_5XX = frozenset({501, 505})  # not implemented / version: asking again is futile


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    max_total_seconds: float = 300.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    retry_after_cap: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("max_total_seconds", "backoff_base", "backoff_cap", "retry_after_cap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class Retryable(Exception):
    """One attempt failed in a way another attempt may fix.

    `reason` is what the logs and the final error say ("status 503", "ConnectError: …");
    `retry_after` the server's wait in seconds (already capped), None without one.
    """

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class RetriesExhausted(Exception):
    """The policy gave up: after `attempts` attempts (`why="attempts"`), or because waiting
    `wait` more seconds would pass `max_total_seconds` (`why="time"`). `last` is the last
    attempt's failure."""

    def __init__(
        self,
        last: Retryable,
        *,
        attempts: int,
        elapsed: float,
        why: Literal["attempts", "time"],
        wait: float,
        policy: RetryPolicy,
    ) -> None:
        self.last = last
        self.attempts = attempts
        self.elapsed = elapsed
        self.why = why
        self.wait = wait
        self.policy = policy
        super().__init__(self.describe())

    def describe(self) -> str:
        if self.why == "attempts":
            return (
                f"giving up after {self.attempts} attempts in {self.elapsed:.1f}s; "
                f"last error: {self.last.reason}"
            )
        return (
            f"giving up after {self.attempts} attempts: waiting {self.wait:.1f}s more would "
            f"exceed max_total_seconds={self.policy.max_total_seconds}; "
            f"last error: {self.last.reason}"
        )


class OnRetry(Protocol):
    def __call__(self, failure: Retryable, attempt: int, wait: float) -> None:
        """Called before sleeping `wait` seconds after failed attempt number `attempt`."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def is_retryable_status(status: int) -> bool:
    """408, 429 and 5xx (but 501, 505); never another 4xx, never a 2xx/3xx."""
    return status in (408, 429) or (500 <= status <= 599 and status not in _NOT_RETRIED_5XX)


def parse_retry_after(value: str | None, *, now: Callable[[], datetime] = _utc_now) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date, never negative);
    None when absent or unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN: unusable
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


def retryable_response(
    status: int,
    headers: Any,
    policy: RetryPolicy,
    *,
    now: Callable[[], datetime] = _utc_now,
) -> Retryable | None:
    """The `Retryable` for a response with this status and headers (a mapping with
    `.get`), or None when the status is not retried (success or a final 4xx)."""
    if not is_retryable_status(status):
        return None
    retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
    if retry_after is not None:
        retry_after = min(retry_after, policy.retry_after_cap)
    return Retryable(f"status {status}", status=status, retry_after=retry_after)


class _WaitRetryAfterOrJitter(tenacity.wait.wait_base):
    """The server's Retry-After when the failure carries one, else full-jitter backoff."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._jitter = tenacity.wait_random_exponential(
            multiplier=policy.backoff_base, max=policy.backoff_cap
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        failure = outcome.exception() if outcome is not None else None
        if isinstance(failure, Retryable) and failure.retry_after is not None:
            return failure.retry_after
        return self._jitter(retry_state)


def call(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: OnRetry | None = None,
) -> T:
    """Run `attempt` until it returns, raises something other than `Retryable`, or the
    policy gives up (`RetriesExhausted`, from the last `Retryable`)."""

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= policy.max_attempts:
            return True
        return state.seconds_since_start + (state.upcoming_sleep or 0) > policy.max_total_seconds

    def give_up(state: tenacity.RetryCallState) -> Any:
        last = state.outcome.exception() if state.outcome is not None else None
        assert isinstance(last, Retryable)
        raise RetriesExhausted(
            last,
            attempts=state.attempt_number,
            elapsed=state.seconds_since_start or 0.0,
            why="attempts" if state.attempt_number >= policy.max_attempts else "time",
            wait=state.upcoming_sleep,
            policy=policy,
        ) from last

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None:
            failure = state.outcome.exception() if state.outcome is not None else None
            assert isinstance(failure, Retryable)
            on_retry(failure, state.attempt_number, state.upcoming_sleep)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(Retryable),
        wait=_WaitRetryAfterOrJitter(policy),
        stop=stop,
        sleep=sleep,
        before_sleep=before_sleep,
        retry_error_callback=give_up,
    )
    return retrying(attempt)
