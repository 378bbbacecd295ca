"""Exact USD conversion: total / rate rounded half-up to cents, integer arithmetic only."""

from __future__ import annotations

import random
from decimal import Decimal

import numpy as np
import pytest

from transform.money import (
    cents_to_decimal,
    reciprocal_fraction,
    scaled_int,
    usd_cents_half_up,
    usd_cents_half_up_many,
)


@pytest.mark.parametrize(
    ("total", "rate", "cents"),
    [
        ("0.01", "2", 1),  # exactly half a cent rounds up
        ("0.03", "2", 2),  # 1.5 cents -> 2
        ("0.01", "3", 0),  # 0.333 cents -> 0
        ("0.02", "3", 1),  # 0.666 cents -> 1
        ("10.00", "0.9213", 1085),  # 10.8542...
        ("10.00", "1", 1000),
        ("0.00", "0.9213", 0),
        ("1000.00", "149.5", 669),  # JPY: 6.6889 USD
        (
            "9999999999.99",
            "157.123456789012345678",
            6364422095,
        ),  # 63644220.9479...  # large total, 18 places
        ("1.00", "0.000000000000000001", 100_000_000_000_000_000_000),  # tiny rate, exact
    ],
)
def test_usd_cents_half_up(total: str, rate: str, cents: int) -> None:
    assert usd_cents_half_up(Decimal(total), Decimal(rate)) == cents


def test_half_up_boundary_with_18_place_rate() -> None:
    # 1.00 / 0.8 = 1.25 exactly -> 125; 0.05 / 0.4 = 0.125 exactly -> 13 (half-up, not even).
    assert usd_cents_half_up(Decimal("1.00"), Decimal("0.800000000000000000")) == 125
    assert usd_cents_half_up(Decimal("0.05"), Decimal("0.4")) == 13
    assert usd_cents_half_up(Decimal("0.05"), Decimal("0.400000000000000001")) == 12


def test_agrees_with_decimal_quantize_half_up() -> None:
    from decimal import ROUND_HALF_UP, localcontext

    with localcontext() as ctx:
        ctx.prec = 80
        for total, rate in [("123.45", "0.9213"), ("0.07", "1.4"), ("5.55", "3.7")]:
            expected = (Decimal(total) / Decimal(rate)).quantize(Decimal("0.01"), ROUND_HALF_UP)
            got = usd_cents_half_up(Decimal(total), Decimal(rate))
            assert cents_to_decimal(got) == expected


def test_total_with_sub_cent_digits_is_rejected() -> None:
    with pytest.raises(ValueError, match="total=0.001"):
        usd_cents_half_up(Decimal("0.001"), Decimal("1"))


def test_rate_with_more_than_18_places_is_rejected() -> None:
    with pytest.raises(ValueError, match="rate="):
        usd_cents_half_up(Decimal("1.00"), Decimal("0.1234567890123456789"))


@pytest.mark.parametrize("rate", ["0", "-1.5"])
def test_non_positive_rate_is_rejected(rate: str) -> None:
    with pytest.raises(ValueError, match="positive"):
        usd_cents_half_up(Decimal("1.00"), Decimal(rate))


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity")])
def test_non_finite_is_rejected(bad: Decimal) -> None:
    with pytest.raises(ValueError, match="finite"):
        usd_cents_half_up(bad, Decimal("1"))


def test_floats_are_refused() -> None:
    with pytest.raises(TypeError, match="float"):
        usd_cents_half_up(0.1, Decimal("1"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        usd_cents_half_up(Decimal("0.10"), 0.9213)  # type: ignore[arg-type]


def test_trailing_zeros_beyond_scale_are_exact() -> None:
    # 38-digit rates exceed the default 28-digit decimal context: must still be exact.
    assert scaled_int(Decimal("12345678901234567890.123456789012345678"), 18) == (
        12345678901234567890123456789012345678
    )
    assert scaled_int(Decimal("1.2300"), 2) == 123
    assert scaled_int(Decimal("1E+3"), 2) == 100000


@pytest.mark.parametrize(
    ("cents", "text"), [(0, "0.00"), (5, "0.05"), (1085, "10.85"), (123456789012, "1234567890.12")]
)
def test_cents_to_decimal(cents: int, text: str) -> None:
    value = cents_to_decimal(cents)
    assert str(value) == text
    assert value.as_tuple().exponent == -2


def test_cents_to_decimal_refuses_floats() -> None:
    with pytest.raises(TypeError):
        cents_to_decimal(10.0)  # type: ignore[arg-type]


def test_reciprocal_fraction_is_one_over_rate_in_lowest_terms() -> None:
    assert reciprocal_fraction(Decimal("0.9213")) == (10_000, 9_213)
    assert reciprocal_fraction(Decimal("2")) == (1, 2)
    assert reciprocal_fraction(Decimal("148.5000")) == (2, 297)
    with pytest.raises(ValueError, match="must be positive"):
        reciprocal_fraction(Decimal("0"))


def test_vectorised_conversion_equals_the_scalar_formula_row_for_row() -> None:
    # 6-decimal rates take the int64 path; 18-significant-decimal rates and totals near
    # the numeric(12,2) limit take the unbounded-int path. Both must give the same cents.
    rates = [
        Decimal("0.921337"),
        Decimal("148.5021"),
        Decimal("1"),
        Decimal("2"),
        Decimal("0.917056000000000128"),
        Decimal("157.123456789012345678"),
    ]
    rng = random.Random(7)
    totals = [0, 1, 3, 5, -5, 999_999_999_999] + [
        rng.randrange(-(10**12), 10**12) for _ in range(5_000)
    ]
    index = [rng.randrange(len(rates)) for _ in totals]
    got = usd_cents_half_up_many(
        np.array(totals, dtype=np.int64),
        np.array(index),
        [reciprocal_fraction(r) for r in rates],
    )
    assert got.dtype == np.int64
    expected = [
        usd_cents_half_up(cents_to_decimal(t), rates[i]) for t, i in zip(totals, index, strict=True)
    ]
    assert got.tolist() == expected


def test_vectorised_conversion_refuses_results_beyond_int64() -> None:
    tiny = reciprocal_fraction(Decimal("0.000000000000000001"))
    with pytest.raises(OverflowError):
        usd_cents_half_up_many(np.array([10**12], dtype=np.int64), np.array([0]), [tiny])
