"""Alerts: where they go (`sinks`), what raises them (`callbacks`, `rules`).

- `sinks`: the `Alert` value and the places it is sent (the task log always, a
  Slack-compatible webhook when the `alerts_webhook` connection is configured).
- `callbacks`: Airflow 3 failure / retry / Deadline callbacks that send alerts.
- `rules`: the per-run alert rules evaluated from the run metrics against the
  thresholds in `config/alerts.yml`.
"""

from alerting.sinks import Alert, AlertSink, LogSink, WebhookSink, send_all, sinks_from_config

__all__ = ["Alert", "AlertSink", "LogSink", "WebhookSink", "send_all", "sinks_from_config"]
