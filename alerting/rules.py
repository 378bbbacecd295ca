"""Alert rules evaluated once per run from the run metrics, thresholds from one YAML file.

`evaluate(metrics, history, thresholds)` returns the alerts of one run. It expects
`metrics` shaped like this (every key optional: a rule whose input is missing or None
is not evaluated)::

    {
        "run_id": "nightly_2026-03-01",
        "dag_id": "nightly_sales",             # copied onto the alerts
        "duration_s": 1830.5,                  # wall clock of the run
        "freshness_lag_s": 9000.0,             # now - newest source updated_at
        "source_freshness": {"raw.orders": {"status": "warn", "age_h": 30.5}},  # dbt's
        "rows_extracted": {"orders": 1200, "payments": 980},   # rows landed, per table
        "quarantined": {"payments": 3},        # records quarantined, per table
        "quality": {"critical_failures": 0, "warnings": 2, "failed_checks": ["..."]},
        "replica_lag_s": 12.0,                 # math.inf when the replica is broken
        "replica_fallback": {"reason": "...", "lag_seconds": 400.0, "max_lag_seconds": 300},
    }

`history` is the metrics of earlier runs, same shape, oldest first (only
`run_id` and `rows_extracted` are read; an entry with the current `run_id` is ignored,
so a re-run is not compared with itself). A rule fires when the observed value is
strictly above its threshold; every alert's text names the rule, the observed value
and the threshold.

`for_runs: N` on a rule (default 1) makes it fire only when its condition held in this
run and in each of the N-1 runs before it: `earlier` is the conditions met by those
earlier runs, oldest first, as `condition_key` strings (`quality`, `row_count_drop:orders`);
`alerting.runs` keeps them in the run files (`data/runs/<run_id>/alerts.json`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from alerting.sinks import SEVERITIES, Alert
from core.settings import PROJECT_ROOT, ConfigError

DEFAULT_ALERTS_CONFIG = PROJECT_ROOT / "config" / "alerts.yml"

RULES = (
    "freshness",
    "row_count_drop",
    "quality",
    "quarantine",
    "run_deadline",
    "replica_lag",
    "replica_fallback",
)


@dataclass(frozen=True)
class Thresholds:
    """The limits of every rule; the defaults are those of `config/alerts.yml`."""

    freshness_max_lag_hours: float = 30
    freshness_severity: str = "critical"
    # a source table past dbt's warn_after (past error_after: `freshness_severity`)
    freshness_warn_severity: str = "warning"
    row_count_drop_max_drop_pct: float = 50
    row_count_drop_trailing_runs: int = 7
    row_count_drop_severity: str = "warning"
    quality_max_critical_failures: int = 0
    quality_severity: str = "critical"
    quarantine_max_rows: int = 100
    quarantine_max_share: float = 0.01
    quarantine_severity: str = "warning"
    run_deadline_max_minutes: float = 120
    run_deadline_severity: str = "warning"
    replica_lag_max_seconds: float = 900
    replica_lag_severity: str = "warning"
    replica_fallback_severity: str = "warning"
    # for_runs: the condition must hold in this many consecutive runs (1: this run alone)
    freshness_for_runs: int = 1
    row_count_drop_for_runs: int = 1
    quality_for_runs: int = 1
    quarantine_for_runs: int = 1
    run_deadline_for_runs: int = 1
    replica_lag_for_runs: int = 1
    replica_fallback_for_runs: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_severity"):
                if value not in SEVERITIES:
                    raise ConfigError(
                        f"alerts config: {_yaml_key(f.name)}={value!r} is not one of "
                        f"{', '.join(SEVERITIES)}"
                    )
            elif isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(
                    f"alerts config: {_yaml_key(f.name)}={value!r} must be a number >= 0"
                )
        if self.row_count_drop_trailing_runs < 1:
            raise ConfigError("alerts config: row_count_drop.trailing_runs must be >= 1")
        for rule in RULES:
            n = self.for_runs(rule)
            if not isinstance(n, int) or n < 1:
                raise ConfigError(f"alerts config: {rule}.for_runs={n!r} must be an integer >= 1")

    def for_runs(self, rule: str) -> int:
        """How many consecutive runs (this one included) `rule`'s condition must hold."""
        return getattr(self, f"{rule}_for_runs")


def _yaml_key(field_name: str) -> str:
    for rule in sorted(RULES, key=len, reverse=True):  # replica_fallback before replica_lag
        if field_name.startswith(rule + "_"):
            return f"{rule}.{field_name[len(rule) + 1 :]}"
    return field_name


def load_thresholds(path: Path | str | None = None) -> Thresholds:
    """Read the thresholds from `path` (default: `config/alerts.yml`).

    The caller resolves `ALERTS_CONFIG` and passes it here. Unknown rules or keys are
    errors that name the valid ones.
    """
    import yaml

    path = Path(path) if path else DEFAULT_ALERTS_CONFIG
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"alerts config {str(path)!r} does not exist") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"alerts config {str(path)!r}: expected a mapping of rules")
    known = {f.name for f in fields(Thresholds)}
    values: dict[str, Any] = {}
    for rule, settings in data.items():
        if rule not in RULES:
            raise ConfigError(
                f"alerts config {str(path)!r}: unknown rule {rule!r}; valid: {', '.join(RULES)}"
            )
        if not isinstance(settings, dict):
            raise ConfigError(f"alerts config {str(path)!r}: {rule} must be a mapping")
        for key, value in settings.items():
            name = f"{rule}_{key}"
            if name not in known:
                valid = sorted(
                    n[len(rule) + 1 :] for n in known if _yaml_key(n).startswith(rule + ".")
                )
                raise ConfigError(
                    f"alerts config {str(path)!r}: unknown key {rule}.{key}; "
                    f"valid: {', '.join(valid)}"
                )
            values[name] = value
    return Thresholds(**values)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if math.isnan(value):
        return None
    return float(value)


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:,.6g}"


def condition_key(alert: Alert) -> str:
    """What a streak (`for_runs`) is counted on: the rule, and its table for per-table rules."""
    rule = str(alert.fields.get("rule"))
    table = alert.fields.get("table")
    return f"{rule}:{table}" if table else rule


def evaluate(
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    thresholds: Thresholds,
    *,
    earlier: Sequence[Collection[str]] | None = None,
) -> list[Alert]:
    """The alerts of one run (empty when every rule is within its threshold).

    A rule with `for_runs: N > 1` fires only when the last N-1 entries of `earlier`
    (the condition keys met by the runs before this one, oldest first) all hold its
    key too; with fewer earlier runs it stays quiet.
    """
    return apply_for_runs(conditions(metrics, history, thresholds), thresholds, earlier)


def apply_for_runs(
    alerts: Sequence[Alert],
    thresholds: Thresholds,
    earlier: Sequence[Collection[str]] | Mapping[str, Sequence[Collection[str]]] | None,
) -> list[Alert]:
    """The `alerts` whose rule's `for_runs` streak holds (see `evaluate`). `earlier` is
    one sequence for every rule, or a sequence per rule (the earlier runs in which that
    rule could be evaluated)."""
    kept = []
    for alert in alerts:
        rule = str(alert.fields["rule"])
        n = thresholds.for_runs(rule)
        if n > 1:
            runs = (earlier.get(rule) if isinstance(earlier, Mapping) else earlier) or []
            before = list(runs)[-(n - 1) :]
            key = condition_key(alert)
            if len(before) < n - 1 or not all(key in met for met in before):
                continue
            alert = replace(
                alert,
                text=f"{alert.text} ({n} runs in a row)",
                fields={**alert.fields, "for_runs": n},
            )
        kept.append(alert)
    return kept


def evaluable(metrics: Mapping[str, Any]) -> set[str]:
    """The rules whose input `metrics` holds (a rule without its input is not evaluated,
    and a run that could not evaluate a rule neither extends nor breaks its streak)."""
    present = {
        "freshness": _number(metrics.get("freshness_lag_s")) is not None
        or bool(metrics.get("source_freshness")),
        "row_count_drop": bool(metrics.get("rows_extracted")),
        "quality": _number((metrics.get("quality") or {}).get("critical_failures")) is not None,
        "quarantine": bool(metrics.get("quarantined")),
        "run_deadline": _number(metrics.get("duration_s")) is not None,
        "replica_lag": _number(metrics.get("replica_lag_s")) is not None,
        "replica_fallback": isinstance(metrics.get("replica_fallback"), Mapping),
    }
    return {rule for rule, ok in present.items() if ok}


class _Fired:
    """The alerts of one run whose condition holds, in the order the rules are checked;
    each carries the run's dag and run id and its rule's name."""

    def __init__(self, metrics: Mapping[str, Any]) -> None:
        self.metrics = metrics
        self.alerts: list[Alert] = []

    def add(self, rule: str, severity: str, title: str, text: str, **details: Any) -> None:
        """Record the alert of `rule` (its condition holds for this run)."""
        self.alerts.append(
            Alert(
                severity=severity,  # type: ignore[arg-type]
                title=title,
                text=f"rule {rule}: {text}",
                dag_id=self.metrics.get("dag_id"),
                run_id=self.metrics.get("run_id"),
                fields={"rule": rule, **details},
            )
        )


def conditions(
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    thresholds: Thresholds,
) -> list[Alert]:
    """The alerts of one run whose condition holds, before any `for_runs` streak."""
    fired = _Fired(metrics)
    _freshness(fired, thresholds)
    _source_freshness(fired, thresholds)
    _row_count_drop(fired, history, thresholds)
    _quality(fired, thresholds)
    _quarantine(fired, thresholds)
    _run_deadline(fired, thresholds)
    _replica_lag(fired, thresholds)
    _replica_fallback(fired, thresholds)
    return fired.alerts


def _freshness(fired: _Fired, t: Thresholds) -> None:
    """The newest source `updated_at` older than `freshness.max_lag_hours`."""
    lag_s = _number(fired.metrics.get("freshness_lag_s"))
    if lag_s is not None and lag_s > t.freshness_max_lag_hours * 3600:
        fired.add(
            "freshness",
            t.freshness_severity,
            "Source data is stale",
            f"newest source updated_at is {_fmt(lag_s / 3600)} h old, "
            f"threshold {_fmt(t.freshness_max_lag_hours)} h",
            observed_hours=lag_s / 3600,
            threshold_hours=t.freshness_max_lag_hours,
        )


def _source_freshness(fired: _Fired, t: Thresholds) -> None:
    """Each source table dbt's freshness check found past warn_after (or error_after)."""
    for table, state in sorted((fired.metrics.get("source_freshness") or {}).items()):
        status, age_h = (state or {}).get("status"), _number((state or {}).get("age_h"))
        if status not in ("warn", "error"):
            continue
        accepted = " (published: ACCEPT_STALE_SOURCES accepted it)" if status == "error" else ""
        fired.add(
            "freshness",
            t.freshness_severity if status == "error" else t.freshness_warn_severity,
            "Source data is stale",
            f"dbt source freshness of {table}: {status}, newest _loaded_at "
            f"{'?' if age_h is None else _fmt(age_h)} h old{accepted}",
            table=table,
            status=status,
            observed_hours=age_h,
        )


def _row_count_drop(fired: _Fired, history: Sequence[Mapping[str, Any]], t: Thresholds) -> None:
    """Each table whose rows extracted fell more than `row_count_drop.max_drop_pct` below
    the average of its last `trailing_runs` earlier runs (this run's own entry skipped)."""
    run_id = fired.metrics.get("run_id")
    past = [h for h in history if not (run_id and h.get("run_id") == run_id)]
    for table, count in sorted((fired.metrics.get("rows_extracted") or {}).items()):
        count = _number(count)
        if count is None:
            continue
        trailing = [
            n
            for n in (_number((h.get("rows_extracted") or {}).get(table)) for h in past)
            if n is not None
        ][-t.row_count_drop_trailing_runs :]
        if not trailing:
            continue  # nothing to compare with
        average = sum(trailing) / len(trailing)
        if average <= 0:
            continue  # no drop from nothing
        drop_pct = (average - count) / average * 100
        if drop_pct > t.row_count_drop_max_drop_pct:
            fired.add(
                "row_count_drop",
                t.row_count_drop_severity,
                f"Row count dropped: {table}",
                f"{table} extracted {_fmt(count)} rows, {_fmt(drop_pct)}% below the average "
                f"{_fmt(average)} of the last {len(trailing)} run(s), "
                f"threshold {_fmt(t.row_count_drop_max_drop_pct)}%",
                table=table,
                observed_rows=count,
                trailing_average=average,
                drop_pct=drop_pct,
                threshold_pct=t.row_count_drop_max_drop_pct,
            )


def _quality(fired: _Fired, t: Thresholds) -> None:
    """More critical quality failures than `quality.max_critical_failures` (the first
    five failed checks named in the text, ten in the fields)."""
    quality = fired.metrics.get("quality") or {}
    critical = _number(quality.get("critical_failures"))
    if critical is None or critical <= t.quality_max_critical_failures:
        return
    failed = list(quality.get("failed_checks") or [])
    text = (
        f"{_fmt(critical)} critical quality failure(s), threshold {t.quality_max_critical_failures}"
    )
    if failed:
        text += f": {', '.join(map(str, failed[:5]))}"
    fired.add(
        "quality",
        t.quality_severity,
        "Critical data quality failure",
        text,
        observed=critical,
        threshold=t.quality_max_critical_failures,
        **({"failed_checks": failed[:10]} if failed else {}),
    )


def _quarantine(fired: _Fired, t: Thresholds) -> None:
    """Each table with more quarantined records than `quarantine.max_rows`, or a larger
    share of the records received (landed + quarantined) than `quarantine.max_share`."""
    rows = fired.metrics.get("rows_extracted") or {}
    for table, quarantined in sorted((fired.metrics.get("quarantined") or {}).items()):
        quarantined = _number(quarantined)
        if quarantined is None:
            continue
        extracted = _number(rows.get(table))
        received = (extracted or 0) + quarantined
        share = quarantined / received if received and extracted is not None else None
        over_count = quarantined > t.quarantine_max_rows
        over_share = share is not None and share > t.quarantine_max_share
        if over_count or over_share:
            share_text = f" ({share:.2%} of {_fmt(received)} received)" if share is not None else ""
            fired.add(
                "quarantine",
                t.quarantine_severity,
                f"Records quarantined: {table}",
                f"{table} quarantined {_fmt(quarantined)} record(s){share_text}, "
                f"threshold {t.quarantine_max_rows} rows or {t.quarantine_max_share:.2%}",
                table=table,
                observed_rows=quarantined,
                observed_share=share,
                threshold_rows=t.quarantine_max_rows,
                threshold_share=t.quarantine_max_share,
            )


def _run_deadline(fired: _Fired, t: Thresholds) -> None:
    """The run took longer than `run_deadline.max_minutes`."""
    duration_s = _number(fired.metrics.get("duration_s"))
    if duration_s is not None and duration_s > t.run_deadline_max_minutes * 60:
        fired.add(
            "run_deadline",
            t.run_deadline_severity,
            "Run exceeded its deadline",
            f"the run took {_fmt(duration_s / 60)} min, "
            f"threshold {_fmt(t.run_deadline_max_minutes)} min",
            observed_minutes=duration_s / 60,
            threshold_minutes=t.run_deadline_max_minutes,
        )


def _replica_lag(fired: _Fired, t: Thresholds) -> None:
    """The replica the extract read lagged more than `replica_lag.max_seconds`."""
    replica_lag = _number(fired.metrics.get("replica_lag_s"))
    if replica_lag is not None and replica_lag > t.replica_lag_max_seconds:
        fired.add(
            "replica_lag",
            t.replica_lag_severity,
            "Replica lag too high",
            f"source_db_replica is {_fmt(replica_lag)} s behind, "
            f"threshold {_fmt(t.replica_lag_max_seconds)} s",
            observed_seconds=replica_lag,
            threshold_seconds=t.replica_lag_max_seconds,
        )


def _replica_fallback(fired: _Fired, t: Thresholds) -> None:
    """The extract read the primary because the replica lagged too far or was down."""
    fallback = fired.metrics.get("replica_fallback")
    if not isinstance(fallback, Mapping):
        return
    lag = _number(fallback.get("lag_seconds"))
    limit = _number(fallback.get("max_lag_seconds"))
    lag_text = "unknown" if lag is None else f"{_fmt(lag)} s"
    limit_text = "" if limit is None else f" (SOURCE_DB_REPLICA_MAX_LAG_SECONDS {_fmt(limit)} s)"
    fired.add(
        "replica_fallback",
        t.replica_fallback_severity,
        "Extract read the primary: replica unusable",
        f"source_db_replica lag {lag_text}{limit_text}: the extract reads the primary "
        f"source_db instead: {fallback.get('reason', '')}",
        observed_seconds=lag,
        threshold_seconds=limit,
    )
