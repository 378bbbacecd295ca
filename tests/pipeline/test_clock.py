"""The pipeline's one clock: NIGHTSHIFT_NOW pins it or shifts it, and says what it takes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core import clock


def test_unset_is_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(clock.ENV, raising=False)
    before = datetime.now(UTC)
    assert before <= clock.now() <= datetime.now(UTC)
    assert clock.now().tzinfo is not None


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2027-01-15T02:00:00Z", datetime(2027, 1, 15, 2, tzinfo=UTC)),
        ("2027-01-15T02:00:00", datetime(2027, 1, 15, 2, tzinfo=UTC)),  # naive is UTC
        ("2027-01-15T03:00:00+01:00", datetime(2027, 1, 15, 2, tzinfo=UTC)),
    ],
)
def test_a_fixed_instant(monkeypatch: pytest.MonkeyPatch, value: str, expected: datetime) -> None:
    monkeypatch.setenv(clock.ENV, value)
    assert clock.now() == expected and clock.now().utcoffset() == timedelta(0)
    assert clock.today_utc() == expected.date()


@pytest.mark.parametrize(
    "value, shift",
    [("+40d", timedelta(days=40)), ("-3d", timedelta(days=-3)), ("+6h", timedelta(hours=6))],
)
def test_a_shift_of_the_wall_clock(
    monkeypatch: pytest.MonkeyPatch, value: str, shift: timedelta
) -> None:
    monkeypatch.setenv(clock.ENV, value)
    before = datetime.now(UTC) + shift
    assert before <= clock.now() <= datetime.now(UTC) + shift


def test_a_bad_value_names_itself_and_the_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(clock.ENV, "next tuesday")
    with pytest.raises(ValueError, match=r"NIGHTSHIFT_NOW='next tuesday' is neither .*\(\+40d"):
        clock.now()
