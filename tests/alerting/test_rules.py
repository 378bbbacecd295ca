"""Every rule fires strictly above its threshold and not at or below it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from alerting.rules import DEFAULT_ALERTS_CONFIG, RULES, Thresholds, evaluate, load_thresholds
from core.settings import ConfigError

T = Thresholds(
    freshness_max_lag_hours=30,
    row_count_drop_max_drop_pct=50,
    row_count_drop_trailing_runs=3,
    quality_max_critical_failures=0,
    quarantine_max_rows=100,
    quarantine_max_share=0.01,
    run_deadline_max_minutes=120,
    replica_lag_max_seconds=900,
)


def rules_fired(metrics: dict, history: list[dict] | None = None) -> list[str]:
    return [a.fields["rule"] for a in evaluate({"run_id": "r9", **metrics}, history or [], T)]


def test_a_healthy_run_raises_nothing() -> None:
    metrics = {
        "duration_s": 600,
        "freshness_lag_s": 3600,
        "rows_extracted": {"orders": 1000, "payments": 990},
        "quarantined": {"payments": 1},
        "quality": {"critical_failures": 0, "warnings": 3},
        "replica_lag_s": 2.5,
    }
    history = [{"run_id": f"r{i}", "rows_extracted": {"orders": 1000}} for i in range(5)]
    assert evaluate(metrics, history, T) == []


def test_missing_metrics_evaluate_no_rule() -> None:
    assert evaluate({}, [], T) == []
    assert rules_fired({"replica_lag_s": None, "freshness_lag_s": math.nan}) == []


# (metrics at the threshold, metrics just above it, rule)
BOUNDARIES = [
    ({"freshness_lag_s": 30 * 3600}, {"freshness_lag_s": 30 * 3600 + 1}, "freshness"),
    ({"quality": {"critical_failures": 0}}, {"quality": {"critical_failures": 1}}, "quality"),
    ({"duration_s": 120 * 60}, {"duration_s": 120 * 60 + 1}, "run_deadline"),
    ({"replica_lag_s": 900}, {"replica_lag_s": 900.5}, "replica_lag"),
    # count: 100 of 100_000 received is 0.1% (share below), only the count decides
    (
        {"rows_extracted": {"payments": 99_900}, "quarantined": {"payments": 100}},
        {"rows_extracted": {"payments": 99_899}, "quarantined": {"payments": 101}},
        "quarantine",
    ),
    # share: 10 of 1000 received is exactly 1%; 11 of 1000 is 1.1%
    (
        {"rows_extracted": {"payments": 990}, "quarantined": {"payments": 10}},
        {"rows_extracted": {"payments": 989}, "quarantined": {"payments": 11}},
        "quarantine",
    ),
]


@pytest.mark.parametrize(("at", "above", "rule"), BOUNDARIES)
def test_rule_boundary(at: dict, above: dict, rule: str) -> None:
    assert rules_fired(at) == []
    assert rules_fired(above) == [rule]


def test_replica_lag_inf_fires() -> None:
    [alert] = evaluate({"replica_lag_s": math.inf}, [], T)
    assert "inf s behind" in alert.text


HISTORY = [
    {"run_id": "r1", "rows_extracted": {"orders": 5000}},  # outside the 3-run window
    {"run_id": "r2", "rows_extracted": {"orders": 1000, "users": 10}},
    {"run_id": "r3", "rows_extracted": {"orders": 900}},
    {"run_id": "r4", "rows_extracted": {"orders": 1100}},
]


def test_row_drop_boundary_against_the_trailing_average() -> None:
    # trailing average of the last 3 runs = 1000 (r1's 5000 is out of the window)
    assert rules_fired({"rows_extracted": {"orders": 500}}, HISTORY) == []  # exactly 50%
    assert rules_fired({"rows_extracted": {"orders": 499}}, HISTORY) == ["row_count_drop"]


def test_row_drop_per_table_and_growth_is_fine() -> None:
    fired = evaluate({"rows_extracted": {"orders": 2000, "users": 4}}, HISTORY, T)
    assert [a.fields["table"] for a in fired] == ["users"]  # 60% below its one-run average


@pytest.mark.parametrize(
    "history",
    [
        [],  # first run ever
        [{"run_id": "r1", "rows_extracted": {"users": 10}}],  # table never seen before
        [{"run_id": "r1"}, {"run_id": "r2", "rows_extracted": None}],  # no counts recorded
        [{"run_id": "r1", "rows_extracted": {"orders": 0}}],  # nothing to drop from
        [{"run_id": "r9", "rows_extracted": {"orders": 1000}}],  # only this run itself
    ],
)
def test_no_usable_history_means_no_drop_alert(history: list[dict]) -> None:
    assert rules_fired({"rows_extracted": {"orders": 1}}, history) == []


def test_alert_texts_name_rule_observed_value_and_threshold() -> None:
    metrics = {
        "run_id": "r9",
        "duration_s": 3 * 3600,
        "freshness_lag_s": 48 * 3600,
        "rows_extracted": {"orders": 100, "payments": 500},
        "quarantined": {"payments": 250},
        "quality": {"critical_failures": 2, "failed_checks": ["parity", "unique_order_id"]},
        "replica_lag_s": 1200,
    }
    texts = {a.fields["rule"]: a.text for a in evaluate(metrics, HISTORY, T)}
    assert texts == {
        "freshness": "rule freshness: newest source updated_at is 48 h old, threshold 30 h",
        "row_count_drop": "rule row_count_drop: orders extracted 100 rows, 90% below the "
        "average 1,000 of the last 3 run(s), threshold 50%",
        "quality": "rule quality: 2 critical quality failure(s), threshold 0: "
        "parity, unique_order_id",
        "quarantine": "rule quarantine: payments quarantined 250 record(s) (33.33% of 750 "
        "received), threshold 100 rows or 1.00%",
        "run_deadline": "rule run_deadline: the run took 180 min, threshold 120 min",
        "replica_lag": "rule replica_lag: source_db_replica is 1,200 s behind, threshold 900 s",
    }
    alerts = evaluate(metrics, HISTORY, T)
    assert {a.severity for a in alerts if a.fields["rule"] in ("freshness", "quality")} == {
        "critical"
    }
    assert all(a.run_id == "r9" for a in alerts)


def test_default_config_file_loads() -> None:
    assert DEFAULT_ALERTS_CONFIG.is_file()
    assert load_thresholds() == Thresholds()  # the file and the dataclass defaults agree
    assert load_thresholds(None) == load_thresholds(DEFAULT_ALERTS_CONFIG)


def test_config_overrides(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yml"
    path.write_text("freshness:\n  max_lag_hours: 2\n  severity: warning\n")
    thresholds = load_thresholds(path)
    assert thresholds.freshness_max_lag_hours == 2
    assert thresholds.freshness_severity == "warning"
    assert thresholds.replica_lag_max_seconds == Thresholds().replica_lag_max_seconds


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("freshnes:\n  max_lag_hours: 2\n", "unknown rule 'freshnes'; valid: freshness, "),
        (
            "freshness:\n  max_hours: 2\n",
            "unknown key freshness.max_hours; valid: for_runs, max_lag_hours, severity",
        ),
        ("replica_lag:\n  severity: info\n  for_runs: 0\n", "replica_lag.for_runs=0 must be"),
        ("quality:\n  for_runs: 1.5\n", "quality.for_runs=1.5 must be an integer >= 1"),
        ("quality:\n  severity: fatal\n", "quality.severity='fatal' is not one of critical"),
        ("replica_lag:\n  max_seconds: -1\n", "replica_lag.max_seconds=-1 must be a number"),
        ("quarantine:\n  max_rows: lots\n", "quarantine.max_rows='lots' must be a number"),
        ("- a\n", "expected a mapping of rules"),
    ],
)
def test_config_errors_name_the_bad_value(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "alerts.yml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_thresholds(path)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_thresholds(tmp_path / "nope.yml")


def test_replica_fallback_fires_when_the_extract_fell_back() -> None:
    fallback = {
        "reason": "replica r: lag 400.0s exceeds 300s",
        "lag_seconds": 400.0,
        "max_lag_seconds": 300,
    }
    [alert] = evaluate({"run_id": "r9", "replica_fallback": fallback}, [], T)
    assert alert.fields["rule"] == "replica_fallback" and alert.severity == "warning"
    assert "lag 400 s (SOURCE_DB_REPLICA_MAX_LAG_SECONDS 300 s)" in alert.text
    assert "exceeds 300s" in alert.text


def test_replica_fallback_is_quiet_when_the_replica_was_read() -> None:
    assert rules_fired({"replica_lag_s": 12.0, "replica_fallback": None}) == []


def test_for_runs_needs_the_earlier_runs_to_meet_the_rule_too() -> None:
    t = Thresholds(quality_for_runs=3, freshness_for_runs=2)
    run = {"run_id": "r9", "quality": {"critical_failures": 1}, "freshness_lag_s": 31 * 3600}
    assert evaluate(run, [], t) == []  # no earlier runs: quiet
    assert [a.fields["rule"] for a in evaluate(run, [], t, earlier=[{"freshness"}])] == [
        "freshness"
    ]
    both = [{"quality", "freshness"}] * 2
    assert [a.fields["rule"] for a in evaluate(run, [], t, earlier=both)] == [
        "freshness",
        "quality",
    ]
    broken = [{"quality"}, {"freshness"}]  # quality missed the run before: not 3 in a row
    assert [a.fields["rule"] for a in evaluate(run, [], t, earlier=broken)] == ["freshness"]


def test_for_runs_is_read_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yml"
    path.write_text("quality:\n  for_runs: 3\nreplica_fallback:\n  severity: info\n")
    t = load_thresholds(path)
    assert t.for_runs("quality") == 3 and t.replica_fallback_severity == "info"
    assert all(t.for_runs(r) == 1 for r in RULES if r != "quality")
