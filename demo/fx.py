"""Deterministic demo FX rates: units of each currency per 1 USD, for any day.

Rates wobble smoothly around a realistic base so that day-to-day conversions differ
(tests catch a wrong day being used) while staying reproducible across runs.
"""

from __future__ import annotations

import math
from datetime import date
from decimal import Decimal

# Units per 1 USD around early-2020s levels, and the quantum each rate is rounded to.
_BASE: dict[str, tuple[float, Decimal]] = {
    "EUR": (0.92, Decimal("0.000001")),
    "GBP": (0.79, Decimal("0.000001")),
    "JPY": (148.5, Decimal("0.0001")),
    "CAD": (1.36, Decimal("0.000001")),
    "AUD": (1.52, Decimal("0.000001")),
    "CHF": (0.88, Decimal("0.000001")),
}

CURRENCIES: tuple[str, ...] = ("USD", *_BASE)


def rates_for(day: date) -> dict[str, str]:
    """Return {currency: decimal string} for `day`; "USD" is always "1"."""
    rates = {"USD": "1"}
    for offset, (currency, (base, quantum)) in enumerate(_BASE.items()):
        # A per-currency phase keeps currencies from moving in lockstep.
        factor = 1 + 0.03 * math.sin(day.toordinal() / 7 + offset)
        # repr() of a float is deterministic across platforms, so is the Decimal.
        value = Decimal(repr(base * factor)).quantize(quantum)
        rates[currency] = format(value, "f")
    return rates
