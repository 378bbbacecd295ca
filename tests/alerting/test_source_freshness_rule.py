"""The `freshness` rule on dbt's source freshness (run metrics `source_freshness`)."""

from __future__ import annotations

from alerting.rules import Thresholds, evaluable, evaluate


def _fired(source_freshness: dict, thresholds: Thresholds | None = None) -> list:
    metrics = {"run_id": "2026-11-27", "source_freshness": source_freshness}
    return [
        (a.fields["table"], a.severity) for a in evaluate(metrics, [], thresholds or Thresholds())
    ]


def test_warn_fires_warn_severity_and_accepted_error_the_rule_severity() -> None:
    fired = _fired(
        {
            "raw.orders": {"status": "pass", "age_h": 1.0},
            "raw.order_items": {"status": "warn", "age_h": 30.0},
            "raw.payments": {"status": "error", "age_h": 76.0, "accepted": True},
            "raw.fx_rates": {"status": "runtime error", "age_h": None},
        }
    )
    assert fired == [("raw.order_items", "warning"), ("raw.payments", "critical")]
    quiet = Thresholds(freshness_warn_severity="info", freshness_severity="warning")
    assert _fired({"raw.order_items": {"status": "warn", "age_h": 30.0}}, quiet) == [
        ("raw.order_items", "info")
    ]


def test_source_freshness_alone_makes_the_rule_evaluable() -> None:
    assert "freshness" in evaluable({"source_freshness": {"raw.orders": {"status": "pass"}}})
    assert "freshness" not in evaluable({"source_freshness": {}})
