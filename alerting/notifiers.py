"""The alert sinks as Airflow notifiers, for any DAG's `on_failure_callback=` /
`on_retry_callback=` (task or DAG level):

    @task(on_failure_callback=[SinkNotifier(), EmailNotifier(to="oncall@example.com")])

`SinkNotifier` sends the callback's alert (alerting.callbacks.alert_from_context) to the
alert sinks: the task log and, when the `alerts_webhook` connection is set, the webhook
(or the sinks given). `EmailNotifier` is the SMTP provider's `SmtpNotifier` sending the
same alert as an e-mail through the `smtp_default` connection (or `smtp_conn_id`).
Like every alert path they never raise: a broken sink must not fail the run it reports on.
Import this module inside a callback path or a DAG file: it imports only Airflow's SDK
and the SMTP provider, no pipeline code.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import BaseNotifier

from alerting.sinks import AlertSink

log = logging.getLogger(__name__)

KINDS = ("task_failure", "task_retry", "dag_failure")


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"notifier kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


class _DagLevelSafe:
    """Airflow 3.3 gives a DAG-level callback a `SerializedDAG`, which cannot make the
    Jinja environment `BaseNotifier` renders its fields with (`AttributeError:
    get_template_env`, and no alert): Airflow's default environment is used instead."""

    def get_template_env(self, dag: Any = None) -> Any:
        if dag is not None and not hasattr(dag, "get_template_env"):
            dag = None
        return super().get_template_env(dag=dag)  # type: ignore[misc]


class SinkNotifier(_DagLevelSafe, BaseNotifier):
    """The alert of a failure (`kind="task_failure"`, the default), a retry
    (`"task_retry"`) or a failed DAG run (`"dag_failure"`) to the alert sinks
    (default: `alerting.sinks.sinks_from_config()`, read when the callback runs)."""

    def __init__(self, kind: str = "task_failure", sinks: Sequence[AlertSink] | None = None):
        super().__init__()
        self.kind = _kind(kind)
        self.sinks = sinks

    def notify(self, context: Any) -> None:
        from alerting.callbacks import alert_from_context
        from alerting.sinks import send_all

        try:
            send_all([alert_from_context(context, kind=self.kind)], self.sinks)
        except Exception:  # never raise from a callback
            log.exception("alerting: the %s notifier failed", self.kind)


def alert_email(alert: Any) -> tuple[str, str]:
    """(subject, HTML body) of an alert: its summary line, its fields, the run's link;
    every value escaped (an error message may hold `<`)."""
    rows = "".join(
        f"<tr><th align='left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in alert.fields.items()
    )
    link = (
        f"<p><a href='{html.escape(alert.url, quote=True)}'>Open the run in Airflow</a></p>"
        if alert.url
        else ""
    )
    body = f"<p>{html.escape(alert.text)}</p><table>{rows}</table>{link}"
    return f"[{alert.severity.upper()}] {alert.title}"[:200], body


class EmailNotifier(_DagLevelSafe, SmtpNotifier):
    """The callback's alert as an e-mail (subject: severity and title; body: what, where,
    the error, the link to the run), through the SMTP provider's `SmtpNotifier` and its
    connection (`AIRFLOW_CONN_SMTP_DEFAULT=smtp://user:pass@host:587`, or `smtp_conn_id`).
    A delivery failure is logged (the connection's password masked by Airflow) and dropped."""

    def __init__(self, to: str | Iterable[str], kind: str = "task_failure", **kwargs: Any) -> None:
        super().__init__(to=to, **kwargs)
        self.kind = _kind(kind)

    def notify(self, context: Any) -> None:
        from alerting.callbacks import alert_from_context

        try:
            self.subject, self.html_content = alert_email(
                alert_from_context(context, kind=self.kind)
            )
            super().notify(context)
        except Exception as exc:  # never raise from a callback
            log.error(
                "alerting: the e-mail notifier (%s) failed: %s: %s",
                self.smtp_conn_id,
                type(exc).__name__,
                exc,
            )
