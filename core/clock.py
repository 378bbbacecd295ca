"""The one clock of production code.

Everything that needs "now" (the demo generator's default end date, the demo's
business day, migration timestamps, freshness) asks `now()`. `NIGHTSHIFT_NOW` pins
or shifts it for tests and replays:

    NIGHTSHIFT_NOW=2027-01-15T02:00:00Z   # a fixed instant (UTC when no offset is given)
    NIGHTSHIFT_NOW=+40d                   # the wall clock moved 40 days (also -3d, +6h)
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from core import settings

ENV = "NIGHTSHIFT_NOW"
_SHIFT = re.compile(r"^([+-])(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def _parse(text: str) -> tuple[datetime | None, timedelta]:
    """(fixed instant, shift): exactly one of them is used."""
    match = _SHIFT.match(text)
    if match:
        sign, amount, unit = match.groups()
        shift = timedelta(**{_UNITS[unit]: int(amount)})
        return None, shift if sign == "+" else -shift
    try:
        fixed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{ENV}={text!r} is neither an ISO-8601 instant (2027-01-15T02:00:00Z) "
            "nor a shift (+40d, -3d, +6h, +30m)"
        ) from None
    if fixed.tzinfo is None:
        fixed = fixed.replace(tzinfo=UTC)
    return fixed, timedelta(0)


def now() -> datetime:
    """The current instant, timezone-aware UTC (`NIGHTSHIFT_NOW` pins or shifts it)."""
    text = settings.env(ENV)
    if not text:
        return datetime.now(UTC)
    fixed, shift = _parse(text)
    if fixed is not None:
        return fixed.astimezone(UTC)
    return datetime.now(UTC) + shift


def today_utc() -> date:
    """The current UTC calendar day."""
    return now().date()
