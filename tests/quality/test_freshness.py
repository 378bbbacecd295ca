"""dbt's source freshness as the quality suite `source_freshness`: what gates a run."""

from __future__ import annotations

import pytest

from core import settings
from core.settings import ConfigError
from quality.freshness import freshness_results
from quality.validate import QualityGateError, raise_for_critical
from warehouse.dbt_runner import SourceFreshness

H = 3600.0


def _fresh(table: str, status: str, age_h: float | None, message: str | None = None):
    return SourceFreshness(
        unique_id=f"source.nightshift.raw.{table}",
        status=status,
        age_s=None if age_h is None else age_h * H,
        max_loaded_at="2026-11-25T00:00:00+00:00",
        snapshotted_at="2026-11-28T04:00:00+00:00",
        warn_after_s=26 * H,
        error_after_s=50 * H,
        message=message,
    )


NIGHT = [
    _fresh("orders", "pass", 1),
    _fresh("order_items", "warn", 32),
    _fresh("payments", "error", 76),
    _fresh("fx_rates", "runtime error", None, "Catalog Error: raw.fx_rates does not exist"),
]


def test_error_is_critical_and_the_gate_names_table_age_and_the_way_on() -> None:
    result = freshness_results(NIGHT, "2026-11-27")
    by_table = {o.table: (o.success, o.severity) for o in result.outcomes}
    assert by_table == {
        "raw.orders": (True, "warning"),
        "raw.order_items": (False, "warning"),
        "raw.payments": (False, "critical"),
        "raw.fx_rates": (False, "warning"),  # not measured: the build reads it and fails itself
    }
    with pytest.raises(QualityGateError) as error:
        raise_for_critical([result])
    message = str(error.value)
    assert "raw.payments" in message and "76.0 h" in message and "50.0 h" in message
    assert "ACCEPT_STALE_SOURCES=payments" in message
    assert "raw.order_items" not in message  # a warning does not stop the run


@pytest.mark.parametrize("accepted", [("payments",), ("*",)])
def test_an_accepted_stale_source_is_a_warning(accepted: tuple[str, ...]) -> None:
    result = freshness_results(NIGHT, "2026-11-27", accepted)
    assert result.critical_failures == []
    payments = next(o for o in result.outcomes if o.table == "raw.payments")
    assert payments.severity == "warning" and not payments.success
    assert payments.details["accepted"] is True
    assert "accepted for this run" in payments.observed_value


def test_accepting_another_table_does_not_pass_this_one() -> None:
    result = freshness_results(NIGHT, "2026-11-27", ("orders",))
    assert [o.table for o in result.critical_failures] == ["raw.payments"]


def test_accept_stale_sources_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCEPT_STALE_SOURCES", " orders, payments ,orders")
    assert settings.accept_stale_sources() == ("orders", "payments")
    monkeypatch.setenv("ACCEPT_STALE_SOURCES", "order")
    with pytest.raises(ConfigError, match=r"'order' is not a source table; use users, .*or \*"):
        settings.accept_stale_sources()
    monkeypatch.delenv("ACCEPT_STALE_SOURCES")
    assert settings.accept_stale_sources() == ()


def test_an_empty_table_has_no_age_and_does_not_stop_the_run() -> None:
    """Emptied on purpose (ALLOW_MASS_DELETE=1): dbt reports the minimum timestamp."""
    empty = SourceFreshness(
        unique_id="source.nightshift.raw.order_items",
        status="error",
        age_s=6.4e10,
        max_loaded_at="0001-01-01T00:00:00+00:00",
        snapshotted_at="2026-11-28T04:00:00+00:00",
        warn_after_s=26 * H,
        error_after_s=50 * H,
    )
    result = freshness_results([empty, _fresh("payments", "error", 76)], "2026-11-27")
    outcome = result.outcomes[0]
    assert (outcome.success, outcome.severity) == (False, "warning")
    assert outcome.observed_value == "not measured: the table holds no rows"
    assert [o.table for o in result.critical_failures] == ["raw.payments"]
