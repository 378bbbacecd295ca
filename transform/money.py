"""Exact money arithmetic shared with dbt: integer cents, never floats.

The formula is fixed in docs/interfaces.md so that the ETL and the dbt models agree to
the cent: ``usd_cents = (2 * total_cents * 10**18 + R) // (2 * R)`` where
``total_cents = total * 100`` and ``R = rate * 10**18`` are exact integers.
"""

from __future__ import annotations

from decimal import Decimal

RATE_SCALE = 18
_RATE_FACTOR = 10**RATE_SCALE


def scaled_int(value: Decimal, places: int, name: str = "value") -> int:
    """Return ``value * 10**places`` as an exact int; ValueError if it is not whole.

    Works on the Decimal's digits directly, so no decimal context rounding can occur
    (a decimal128(38,18) rate has more digits than the default 28-digit context).
    """
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{name} must be a Decimal (never a float), got {type(value).__name__}")
    if isinstance(value, int):
        return value * 10**places
    if not value.is_finite():
        raise ValueError(f"{name}={value} is not a finite number")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    coefficient = int("".join(map(str, digits))) if digits else 0
    shift = exponent + places
    if shift >= 0:
        result = coefficient * 10**shift
    else:
        result, remainder = divmod(coefficient, 10**-shift)
        if remainder:
            raise ValueError(
                f"{name}={value} has more than {places} decimal places; "
                f"it is not an exact multiple of 10^-{places}"
            )
    return -result if sign else result


def usd_cents_half_up(total: Decimal, rate: Decimal) -> int:
    """Convert ``total`` (in a currency) to USD cents: ``total / rate`` rounded half-up.

    ``rate`` is units of the currency per 1 USD. Raises ValueError when ``total`` is not
    a whole number of cents, ``rate`` has more than 18 decimal places, or ``rate <= 0``.
    """
    total_cents = scaled_int(total, 2, "total")
    r = scaled_int(rate, RATE_SCALE, "rate")
    if r <= 0:
        raise ValueError(f"rate={rate} must be positive")
    return (2 * total_cents * _RATE_FACTOR + r) // (2 * r)


def cents_to_decimal(cents: int) -> Decimal:
    """Integer cents -> Decimal with exactly 2 places (built from a string: exact)."""
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise TypeError(f"cents must be an int, got {type(cents).__name__}")
    return Decimal(f"{cents}e-2")
