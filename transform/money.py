"""Exact money arithmetic shared with dbt: integer cents, never floats.

The formula is fixed in docs/interfaces.md so that the ETL and the dbt models agree to
the cent: ``usd_cents = (2 * total_cents * 10**18 + R) // (2 * R)`` where
``total_cents = total * 100`` and ``R = rate * 10**18`` are exact integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from math import gcd

import numpy as np

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


def reciprocal_fraction(rate: Decimal) -> tuple[int, int]:
    """``1 / rate`` as ``(num, den)`` in lowest terms, for `usd_cents_half_up_many`.

    With ``g = gcd(10**18, R)``, ``num = 10**18 // g`` and ``den = R // g``:
    ``(2*t*10**18 + R) // (2*R) == (2*t*num + den) // (2*den)`` (the same fraction,
    reduced), so the result is the formula above, only with smaller integers. Rates
    quoted with a few decimals (``0.921337``) reduce to numbers that fit int64 maths.
    """
    r = scaled_int(rate, RATE_SCALE, "rate")
    if r <= 0:
        raise ValueError(f"rate={rate} must be positive")
    g = gcd(_RATE_FACTOR, r)
    return _RATE_FACTOR // g, r // g


_INT64_MAX = 2**63 - 1


def _int64_bound(num: int, den: int) -> int:
    """Largest |t| for which ``2*|t|*num + den`` (and ``2*den``) stay within int64; -1: none."""
    if 2 * den > _INT64_MAX or num > _INT64_MAX:
        return -1
    return (_INT64_MAX - den) // (2 * num)


def usd_cents_half_up_many(
    total_cents: np.ndarray, rate_index: np.ndarray, fractions: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Vectorised `usd_cents_half_up`: ``total_cents[i]`` at rate ``fractions[rate_index[i]]``.

    Same integer formula, exact: rows whose intermediate values fit int64 are computed
    with numpy integer floor division (no float anywhere); the rest (a rate with many
    significant decimals, or a huge total) with Python's unbounded ints. Raises
    OverflowError if a result does not fit int64 cents.
    """
    t = np.asarray(total_cents, dtype=np.int64)
    idx = np.asarray(rate_index, dtype=np.intp)
    bounds = np.array([_int64_bound(n, d) for n, d in fractions], dtype=np.int64)
    nums = np.array([n if b >= 0 else 0 for (n, _), b in zip(fractions, bounds, strict=True)])
    dens = np.array([d if b >= 0 else 1 for (_, d), b in zip(fractions, bounds, strict=True)])
    row_bound = bounds[idx] if len(fractions) else np.empty(0, dtype=np.int64)
    fast = (t <= row_bound) & (t >= -row_bound)
    out = np.empty(len(t), dtype=np.int64)
    n, d = nums.astype(np.int64)[idx[fast]], dens.astype(np.int64)[idx[fast]]
    out[fast] = (2 * t[fast] * n + d) // (2 * d)
    for i in np.flatnonzero(~fast):
        num, den = fractions[idx[i]]
        q = (2 * int(t[i]) * num + den) // (2 * den)
        if not -_INT64_MAX - 1 <= q <= _INT64_MAX:
            raise OverflowError(f"{q} USD cents do not fit a 64-bit integer")
        out[i] = q
    return out
