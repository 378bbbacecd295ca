"""Where alerts go: the task log always, a Slack-compatible webhook when configured.

A sink never raises: a broken webhook must not fail the pipeline it reports on, so a
delivery failure is logged (with the webhook's secret path masked) and dropped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from core import http_retry
from core.settings import ConfigError, _mask, get_connection_uri

log = logging.getLogger(__name__)

ALERTS_WEBHOOK_CONN_ID = "alerts_webhook"
SEVERITIES = ("critical", "warning", "info")
Severity = Literal["critical", "warning", "info"]

_LOG_LEVEL = {"critical": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}
_EMOJI = {"critical": ":red_circle:", "warning": ":warning:", "info": ":information_source:"}


@dataclass(frozen=True)
class Alert:
    """One alert: what happened (title, text), where (dag/task/run), details (fields), and
    `url`: the run in the Airflow UI (`alerting.runs.run_url`), None outside Airflow."""

    severity: Severity
    title: str
    text: str
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    url: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"alert severity {self.severity!r} is not one of {', '.join(SEVERITIES)}"
            )

    def summary(self) -> str:
        """One line for logs and the webhook's plain-text fallback."""
        where = " ".join(
            f"{k}={v}"
            for k, v in (("dag", self.dag_id), ("task", self.task_id), ("run", self.run_id))
            if v
        )
        head = f"[{self.severity.upper()}] {self.title}"
        line = f"{head} ({where}): {self.text}" if where else f"{head}: {self.text}"
        return f"{line} <{self.url}>" if self.url else line


@runtime_checkable
class AlertSink(Protocol):
    def send(self, alert: Alert) -> None:
        """Deliver one alert; never raise."""


class LogSink:
    """Writes the alert to the Python log (the Airflow task log inside a task)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("alerting")

    def send(self, alert: Alert) -> None:
        try:
            self._log.log(
                _LOG_LEVEL[alert.severity],
                "ALERT %s",
                alert.summary(),
                extra={"alert_fields": alert.fields},
            )
        except Exception:  # a sink never raises
            return

    def __repr__(self) -> str:
        return "LogSink()"


def mask_url(url: str) -> str:
    """`https://hooks.slack.com/services/T/B/X` → `https://hooks.slack.com/***`."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return f"{parts.scheme}://{netloc}/***"
    except Exception:
        return "***"


class _ScrubFilter(logging.Filter):
    """Removes a webhook's secret URL from records of a library logger (httpx logs URLs)."""

    def __init__(self, secrets: Sequence[str], replacement: str) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]
        self.replacement = replacement

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(s in message for s in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, self.replacement)
            record.msg, record.args = message, ()
        return True


#: an alert callback must not hold its task for long: 3 attempts within a minute, backoff
#: from 1 s capped at 10 s, 30 s at most per Retry-After
WEBHOOK_RETRY = http_retry.RetryPolicy(
    max_attempts=3,
    max_total_seconds=60.0,
    backoff_base=1.0,
    backoff_cap=10.0,
    retry_after_cap=30.0,
)


class WebhookSink:
    """POSTs Slack-compatible JSON (`text` fallback + `blocks`) to a webhook URL.

    Retries with the project's policy (`core.http_retry`, `retry`: WEBHOOK_RETRY by
    default): 408, 429, 5xx, timeouts and connection errors, `max_attempts` in all within
    `max_total_seconds`, full-jitter backoff from `backoff_base`, honouring `Retry-After`
    up to `retry_after_cap` seconds; any other 4xx is not retried. `timeout` per request.
    Never raises.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10,
        retry: http_retry.RetryPolicy = WEBHOOK_RETRY,
        logger: logging.Logger | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{ALERTS_WEBHOOK_CONN_ID}: the webhook URL must be http(s)://host/..., "
                f"got {mask_url(url)!r}"
            )
        self.policy = retry
        self._sleep = sleep
        self.url = url
        self.timeout = timeout
        self.masked_url = mask_url(url)
        self._log = logger or log
        secret_path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._secrets = sorted({url, secret_path, parts.path} - {"", "/"}, key=len, reverse=True)
        for secret in self._secrets:
            _mask(secret)  # Airflow's log masker, when present
        self._filter = _ScrubFilter(self._secrets, self.masked_url)

    def __repr__(self) -> str:
        return f"WebhookSink(url={self.masked_url!r})"

    @staticmethod
    def payload(alert: Alert) -> dict[str, Any]:
        """Slack message: `text` is the notification/fallback, `blocks` the rich layout."""
        context = [
            f"*{label}:* `{value}`"
            for label, value in (
                ("dag", alert.dag_id),
                ("task", alert.task_id),
                ("run", alert.run_id),
            )
            if value
        ]
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": f"{alert.title}"[:150]},
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"{_EMOJI[alert.severity]} *{alert.severity.upper()}* {alert.text}"[
                        :3000
                    ],
                },
            },
        ]
        if alert.fields:
            blocks.append(
                {
                    "type": "section",
                    "fields": [
                        {"type": "mrkdwn", "text": f"*{k}*\n{_field_text(v)}"[:2000]}
                        for k, v in list(alert.fields.items())[:10]  # Slack: at most 10
                    ],
                }
            )
        if alert.url:
            blocks.append(
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": f"<{alert.url}|Open the run in Airflow>"},
                }
            )
        if context:
            blocks.append(
                {"type": "context", "elements": [{"type": "mrkdwn", "text": " ".join(context)}]}
            )
        return {"text": alert.summary(), "blocks": blocks}

    def send(self, alert: Alert) -> None:
        try:
            self._send(alert)
        except Exception as exc:  # never raise to the caller
            self._log.error(
                "alert webhook %s: unexpected error %s: %s",
                self.masked_url,
                type(exc).__name__,
                self._scrub(str(exc)),
            )

    def _send(self, alert: Alert) -> None:
        import httpx  # imported when an alert is sent, not when a DAG is parsed

        body = json.dumps(self.payload(alert), default=str).encode()
        headers = {"Content-Type": "application/json"}

        def attempt(client: httpx.Client) -> bool:
            """True: delivered; False: rejected for good (logged); raises Retryable."""
            try:
                response = client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:  # timeouts, refused connections, ...
                raise http_retry.Retryable(
                    f"{type(exc).__name__}: {self._scrub(str(exc))}"
                ) from None
            if response.is_success:
                return True
            problem = f"HTTP {response.status_code}: {self._scrub(response.text[:200])}"
            failure = http_retry.retryable_response(
                response.status_code, response.headers, self.policy
            )
            if failure is None:
                self._log.error(
                    "alert webhook %s rejected the alert (%s); not retried; alert: %s",
                    self.masked_url,
                    problem,
                    alert.title,
                )
                return False
            failure.reason = problem
            raise failure

        def on_retry(failure: http_retry.Retryable, attempt: int, wait: float) -> None:
            self._log.warning(
                "alert webhook %s attempt %d/%d failed (%s); retrying in %.2fs%s",
                self.masked_url,
                attempt,
                self.policy.max_attempts,
                failure.reason,
                wait,
                " (Retry-After)" if failure.retry_after is not None else "",
            )

        httpx_logger = logging.getLogger("httpx")
        httpx_logger.addFilter(self._filter)
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
                http_retry.call(
                    lambda: attempt(client), self.policy, sleep=self._sleep, on_retry=on_retry
                )
        except http_retry.RetriesExhausted as exc:
            self._log.error(
                "alert webhook %s failed after %d attempts (%s)%s; alert dropped: %s",
                self.masked_url,
                exc.attempts,
                exc.last.reason,
                "" if exc.why == "attempts" else f": {exc.describe()}",
                alert.title,
            )
        finally:
            httpx_logger.removeFilter(self._filter)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _field_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def webhook_url_from_uri(uri: str) -> str:
    """The webhook URL of an `alerts_webhook` connection URI.

    `AIRFLOW_CONN_ALERTS_WEBHOOK=https://hooks.slack.com/services/T/B/X` is the URL as is
    (scheme, host, port, path and query kept). A URI that went through Airflow's
    `Connection.get_uri()` is undone: the path it percent-encodes (`services%2FT%2FB%2FX`),
    a full URL stored in the host field (`http://https://host%2Fpath`), and extras
    (`?__extra__={...}`) turned back into query parameters.
    """
    uri = uri.strip()
    scheme, _, rest = uri.partition("://")
    if scheme in ("http", "https") and rest.lower().startswith(("http://", "https://")):
        return webhook_url_from_uri(unquote(rest))  # a full URL stored in the host field
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"connection {ALERTS_WEBHOOK_CONN_ID!r}: expected http(s)://host[:port]/path, "
            f"got {mask_url(uri)!r}"
        )
    path = unquote(parts.path) if "%2f" in parts.path.lower() else parts.path
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k == "__extra__" for k, _ in pairs):
        params: list[tuple[str, str]] = []
        for key, value in pairs:
            if key != "__extra__":
                params.append((key, value))
                continue
            try:
                extra = json.loads(value)
            except ValueError:
                continue
            if isinstance(extra, dict):
                params += [(str(k), str(v)) for k, v in extra.items() if not isinstance(v, dict)]
        query = urlencode(params)
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def sinks_from_config(
    conn_id: str = ALERTS_WEBHOOK_CONN_ID, *, timeout: float = 10, max_attempts: int = 3
) -> list[AlertSink]:
    """LogSink always; plus a WebhookSink when the `alerts_webhook` connection is configured.

    A malformed webhook URI is logged (masked) and skipped: alerting must still reach the log.
    """
    sinks: list[AlertSink] = [LogSink()]
    try:
        uri = get_connection_uri(conn_id, required=False)
    except Exception as exc:
        log.error("alerts: could not read connection %r: %s", conn_id, type(exc).__name__)
        return sinks
    if not uri:
        return sinks
    try:
        sinks.append(
            WebhookSink(
                webhook_url_from_uri(uri),
                timeout=timeout,
                retry=replace(WEBHOOK_RETRY, max_attempts=max_attempts),
            )
        )
    except (ConfigError, ValueError) as exc:
        log.error("alerts: webhook disabled: %s", exc)
    return sinks


def send_all(alerts: Iterable[Alert], sinks: Sequence[AlertSink] | None = None) -> int:
    """Send every alert to every sink (default: `sinks_from_config()`); return the count.

    Never raises: one failing sink does not stop the others.
    """
    alerts = list(alerts)
    if not alerts:
        return 0
    if sinks is None:
        sinks = sinks_from_config()
    for alert in alerts:
        for sink in sinks:
            try:
                sink.send(alert)
            except Exception as exc:  # a third-party sink that breaks the contract
                log.error("alert sink %r raised %s", sink, type(exc).__name__)
    return len(alerts)
