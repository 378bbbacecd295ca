"""The alert sinks as Airflow notifiers, through real Airflow (`airflow dags test` of a
DAG whose task fails): `SinkNotifier` delivers the failure to the webhook sink,
`EmailNotifier` (the SMTP provider's `SmtpNotifier`) as an e-mail to a real SMTP server
on loopback; a notifier whose server is down logs and returns (never raises)."""

from __future__ import annotations

import json
import logging
import subprocess
import textwrap
from pathlib import Path

import pytest

from alerting.notifiers import EmailNotifier, SinkNotifier, alert_email
from alerting.sinks import Alert
from pipeline.airflow_run import airflow_bin, airflow_env, ensure_airflow_initialised
from tests.alerting.test_sinks import closed_port, receiver_running
from tests.smtp_server import smtp_server

PROBE_DAG = """
import pendulum
from airflow.sdk import dag, task

from alerting.notifiers import EmailNotifier, SinkNotifier


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    on_failure_callback=SinkNotifier(kind="dag_failure"),
)
def notifier_probe():
    @task(
        retries=0,
        on_failure_callback=[SinkNotifier(), EmailNotifier(to=["oncall@example.test"])],
    )
    def boom():
        raise ValueError("orders <bad> row 7: amount is not a number")

    boom()


notifier_probe()
"""


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_failed_task_reaches_the_webhook_and_the_mailbox(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "notifier_probe.py").write_text(textwrap.dedent(PROBE_DAG))
    with receiver_running() as webhook, smtp_server() as smtp:
        env = airflow_env(
            {
                "AIRFLOW_HOME": str(tmp_path / "airflow"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                "AIRFLOW_CONN_ALERTS_WEBHOOK": webhook.url,
                "AIRFLOW_CONN_SMTP_DEFAULT": (
                    f"smtp://{smtp.host}:{smtp.port}?disable_ssl=true&disable_tls=true"
                    "&from_email=nightshift%40example.test&retry_limit=1"
                ),
            }
        )
        ensure_airflow_initialised(env)
        run = subprocess.run(
            [airflow_bin(), "dags", "test", "notifier_probe"], env=env, capture_output=True
        )
        assert run.returncode != 0  # the run failed: the notifiers did not change that
        texts = [p["text"] for p in webhook.json_bodies()]
        messages = list(smtp.messages)

    assert [t.split(" (")[0] for t in texts] == [
        "[CRITICAL] Task failed: notifier_probe.boom",
        "[CRITICAL] DAG run failed: notifier_probe",
    ], texts
    assert "ValueError: orders <bad> row 7: amount is not a number" in texts[0]
    [mail] = messages
    assert mail.mail_from == "nightshift@example.test"
    assert mail.rcpt_to == ["oncall@example.test"]
    assert mail.message["Subject"] == "[CRITICAL] Task failed: notifier_probe.boom"
    body = "".join(
        part.get_payload(decode=True).decode()
        for part in mail.message.walk()
        if part.get_content_type() == "text/html"
    )
    # the error, escaped, and the link to the run in the Airflow UI
    assert "orders &lt;bad&gt; row 7: amount is not a number" in body
    assert "<bad>" not in body
    assert "/dags/notifier_probe/runs/manual__" in body


def test_an_unreachable_smtp_server_is_logged_not_raised(monkeypatch, caplog) -> None:
    port = closed_port()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DOWN",
        f"smtp://127.0.0.1:{port}?disable_ssl=true&disable_tls=true&retry_limit=1&timeout=2",
    )
    notifier = EmailNotifier(
        to="oncall@example.test", from_email="nightshift@example.test", smtp_conn_id="smtp_down"
    )
    context = {"run_id": "r1", "task_instance": None, "exception": OSError("disk full")}
    with caplog.at_level(logging.ERROR, logger="alerting.notifiers"):
        notifier.notify(context)  # returns
    [logged] = [r.getMessage() for r in caplog.records if "e-mail notifier" in r.getMessage()]
    # it reached the connection and the (closed) port, and said so
    assert "(smtp_down) failed: ConnectionRefusedError" in logged, logged


def test_the_email_escapes_every_value_and_the_kind_is_checked() -> None:
    alert = Alert(
        severity="warning",
        title="Task up for retry: d.t",
        text="dag d, task t: <script>",
        fields={"error": "a < b", "try": "1/3"},
        url="http://airflow.test/dags/d/runs/r%3A1",
    )
    subject, body = alert_email(alert)
    assert subject == "[WARNING] Task up for retry: d.t"
    assert "<script>" not in body and "&lt;script&gt;" in body and "a &lt; b" in body
    assert "href='http://airflow.test/dags/d/runs/r%3A1'" in body
    with pytest.raises(ValueError, match="not one of task_failure, task_retry, dag_failure"):
        SinkNotifier(kind="success")
    assert json.dumps(SinkNotifier(kind="task_retry").kind) == '"task_retry"'
