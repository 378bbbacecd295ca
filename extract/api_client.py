"""HTTP client for the payments/FX API (docs/contract.md), with the project's retry policy.

`core.http_retry`: 408, 429, 5xx, timeouts and connection errors are retried with
exponential backoff and full jitter, honouring `Retry-After` (capped at `retry_after_cap`);
it gives up after `max_attempts` or `max_total_seconds`. Any other 4xx, and a 200 whose
body is not JSON, fail at once. The bearer token only ever travels in the header: error
messages and log lines are built from the base URL (which has no credentials) and are
scrubbed of the token anyway, in case a server echoes it back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import httpx

from core import http_retry
from core.settings import ApiConfig

log = logging.getLogger(__name__)

_BODY_SNIPPET = 200
#: 8 attempts within 300 s, backoff from 0.5 s capped at 30 s, Retry-After up to 120 s
DEFAULT_RETRY = http_retry.RetryPolicy()


class ApiError(RuntimeError):
    """The API failed or answered something unusable; the message names status and URL."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None):
        super().__init__(message)
        self.status = status
        self.url = url


class ApiContractError(ApiError):
    """An answer that breaks the API's contract (paging): retrying cannot fix it."""


class PaymentsApiClient:
    """Synchronous client; use as a context manager or call `close()`.

    `retry`: when a failed request is asked again (`core.http_retry.RetryPolicy`,
    default DEFAULT_RETRY); `timeout` per request; `transport` and `sleep` for tests.
    """

    def __init__(
        self,
        config: ApiConfig,
        *,
        timeout: float = 30.0,
        retry: http_retry.RetryPolicy = DEFAULT_RETRY,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.policy = retry
        self._token = config.token
        self.base_url = config.base_url.rstrip("/")
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {config.token}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,  # a redirect could carry the header to another host
        )

    def __enter__(self) -> PaymentsApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"PaymentsApiClient(base_url={self.base_url!r})"

    # -- public API -----------------------------------------------------------------

    def iter_payment_pages(
        self,
        updated_since: datetime | None,
        limit: int = 500,
        *,
        max_pages: int = 100_000,
        max_seconds: float = 3600.0,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield each page's records (raw dicts, unvalidated), following next_cursor.

        A naive `updated_since` is taken as UTC. A page that breaks the contract stops
        the extract with an ApiError naming the page: no `next_cursor` key (it would
        look like the last page), a cursor that is not a string or was seen before
        (endless paging), more records than `limit` besides repeats of the page before
        (the contract lets a page repeat them: they are dropped as duplicates later).
        `max_pages` and `max_seconds` bound an API that keeps handing out new cursors.
        """
        params: dict[str, str] = {"limit": str(limit)}
        if updated_since is not None:
            if updated_since.tzinfo is None:
                updated_since = updated_since.replace(tzinfo=UTC)
            params["updated_since"] = updated_since.astimezone(UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            )
        seen_cursors: set[str] = set()
        previous_ids: frozenset[Any] = frozenset()
        started = time.monotonic()
        for page in range(1, max_pages + 1):
            body = self._get_json("/v1/payments", params, f"page {page}")
            url = self._describe("/v1/payments", params)
            next_cursor = _check_page(body, page, url, limit, previous_ids)
            previous_ids = frozenset(_record_ids(body["data"]))
            yield body["data"]
            if next_cursor is None:
                return
            if next_cursor in seen_cursors:  # would loop forever: fail loudly instead
                raise ApiContractError(
                    f"GET {url}: page {page}: next_cursor did not advance", url=url
                )
            seen_cursors.add(next_cursor)
            elapsed = time.monotonic() - started
            if elapsed > max_seconds:
                raise ApiContractError(
                    f"GET {url}: still paging after {page} pages and {elapsed:.0f}s, more "
                    f"than max_seconds={max_seconds:.0f}: the API keeps returning new cursors",
                    url=url,
                )
            params = {"limit": str(limit), "cursor": next_cursor}
        raise ApiContractError(
            f"GET /v1/payments: more than max_pages={max_pages} pages: the API keeps "
            "returning new cursors (raise max_pages if the window really is that large)"
        )

    def get_fx_rates(self, day: date) -> dict[str, Any]:
        """Return {"base": "USD", "date": "YYYY-MM-DD", "rates": {cur: str}} for `day`."""
        params = {"date": day.isoformat()}
        body = self._get_json("/v1/fx-rates", params, f"fx rates for {day.isoformat()}")
        url = self._describe("/v1/fx-rates", params)

        def bad(why: str) -> ApiError:
            return ApiError(f"GET {url}: invalid fx-rates for {day.isoformat()}: {why}", url=url)

        if not isinstance(body, dict):
            raise bad(f"expected a JSON object, got {type(body).__name__}")
        if body.get("base") != "USD":
            raise bad(f"base={body.get('base')!r}, expected 'USD'")
        if body.get("date") != day.isoformat():
            raise bad(f"date={body.get('date')!r}")
        rates = body.get("rates")
        if not isinstance(rates, dict) or not rates:
            raise bad(f"rates={rates!r} is not a non-empty object")
        for currency, rate in rates.items():
            if not isinstance(rate, str):
                raise bad(f"rate for {currency!r} is {rate!r}, not a decimal string")
        return {"base": "USD", "date": day.isoformat(), "rates": dict(rates)}

    # -- internals ------------------------------------------------------------------

    def _not_json(self, url: str, what: str, response: httpx.Response) -> ApiContractError:
        content_type = response.headers.get("content-type", "(none)")
        head = self._redact(response.content[:_BODY_SNIPPET].decode("utf-8", "replace"))
        where = f"{what}: " if what else ""
        return ApiContractError(
            f"GET {url}: {where}status 200 with a body that is not JSON "
            f"(content-type {content_type!r}, {len(response.content)} bytes, "
            f"starting {head!r}); not retried",
            status=200,
            url=url,
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _describe(self, path: str, params: dict[str, str]) -> str:
        return self._redact(str(httpx.URL(self.base_url + path, params=params)))

    def _get_json(self, path: str, params: dict[str, str], what: str = "") -> Any:
        """GET with retries; return the decoded JSON body of a 200.

        A 200 whose body is not JSON (an HTML error page of a proxy, a truncated
        stream) raises ApiContractError at once, naming `what` (e.g. "page 3"), the
        content type and the first bytes: retrying the same request gets the same page.
        """
        url = self._describe(path, params)

        def attempt() -> Any:
            try:
                response = self._http.get(path, params=params)
            except httpx.TransportError as exc:  # timeouts, refused/reset connections
                raise http_retry.Retryable(self._redact(f"{type(exc).__name__}: {exc}")) from None
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError:
                    raise self._not_json(url, what, response) from None
            failure = http_retry.retryable_response(
                response.status_code, response.headers, self.policy
            )
            if failure is not None:
                raise failure
            snippet = self._redact(response.text[:_BODY_SNIPPET])
            raise ApiError(
                f"GET {url} failed with status {response.status_code}: {snippet}",
                status=response.status_code,
                url=url,
            )

        def on_retry(failure: http_retry.Retryable, attempt: int, wait: float) -> None:
            log.warning(
                "GET %s: %s (attempt %d/%d); retrying in %.2fs%s",
                url,
                failure.reason,
                attempt,
                self.policy.max_attempts,
                wait,
                " (Retry-After)" if failure.retry_after is not None else "",
            )

        try:
            return http_retry.call(attempt, self.policy, sleep=self._sleep, on_retry=on_retry)
        except http_retry.RetriesExhausted as exc:
            raise ApiError(
                f"GET {url}: {exc.describe()}", status=exc.last.status, url=url
            ) from None


def _record_ids(records: list[Any]) -> Iterator[Any]:
    """The hashable `id`s of a page's records (a record without one has none)."""
    for record in records:
        key = record.get("id") if isinstance(record, dict) else None
        if isinstance(key, str | int):
            yield key


def _check_page(
    body: Any, page: int, url: str, limit: int, previous_ids: frozenset[Any] = frozenset()
) -> str | None:
    """The page's next cursor (None: the last page), or ApiError naming what is wrong.
    `previous_ids`: the ids of the page before (its repeats do not count toward `limit`)."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ApiContractError(f"GET {url}: page {page}: response has no 'data' list", url=url)
    if "next_cursor" not in body:
        raise ApiContractError(
            f"GET {url}: page {page}: no 'next_cursor' key (the contract sends null on the "
            "last page); it cannot be told from a last page",
            url=url,
        )
    next_cursor = body["next_cursor"]
    if next_cursor is not None and (not isinstance(next_cursor, str) or not next_cursor):
        raise ApiContractError(
            f"GET {url}: page {page}: next_cursor={next_cursor!r} is not a non-empty string",
            url=url,
        )
    size = len(body["data"])
    if size > limit:
        repeats = sum(1 for key in _record_ids(body["data"]) if key in previous_ids)
        if size - repeats > limit:
            raise ApiContractError(
                f"GET {url}: page {page}: {size} records, more than limit={limit}"
                + (f" besides {repeats} repeated from the page before" if repeats else ""),
                url=url,
            )
        log.warning(
            "GET %s: page %d: %d records, over limit=%d by %d repeated from the page before "
            "(dropped as duplicates)",
            url,
            page,
            size,
            limit,
            repeats,
        )
    return next_cursor


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if unusable."""
    return http_retry.parse_retry_after(value)
