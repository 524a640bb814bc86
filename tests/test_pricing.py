"""Pricing properties: what users pay grows with what they ask for, never below the base."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.pricing import cost_for, generation_cost
from bot.settings import Settings

SIDES = st.integers(min_value=64, max_value=4096)
STEPS = st.integers(min_value=1, max_value=200)
COUNTS = st.integers(min_value=1, max_value=16)
PRICES = st.integers(min_value=0, max_value=20)


def test_default_grid_costs_four() -> None:
    assert generation_cost(1024, 1024, 30, 4) == 4
    assert generation_cost(512, 512, 20, 4) == 4


def test_bigger_or_longer_costs_more() -> None:
    assert generation_cost(2048, 1024, 30, 1) == 2
    assert generation_cost(1024, 1024, 31, 1) == 2  # any excess rounds up
    assert generation_cost(1024, 1024, 60, 4, price_per_image=3) == 24


@given(SIDES, SIDES, STEPS, COUNTS, PRICES)
def test_never_below_base_price(width: int, height: int, steps: int, count: int,
                                price: int) -> None:
    cost = generation_cost(width, height, steps, count, price_per_image=price)
    assert cost >= count * price
    exact = count * price * width * height * steps / (1024 * 1024 * 30)
    assert exact <= cost < max(exact, count * price) + 1


@given(SIDES, SIDES, STEPS, COUNTS, PRICES, st.sampled_from(["width", "height", "steps",
                                                             "count", "price_per_image"]))
def test_monotone_in_every_argument(width: int, height: int, steps: int, count: int,
                                    price: int, grown: str) -> None:
    args = {"width": width, "height": height, "steps": steps, "count": count,
            "price_per_image": price}
    before = generation_cost(**args)
    args[grown] += 1
    assert generation_cost(**args) >= before


@given(SIDES, SIDES, STEPS, COUNTS)
def test_cost_is_per_image(width: int, height: int, steps: int, count: int) -> None:
    one = generation_cost(width, height, steps, 1)
    assert count * (one - 1) < generation_cost(width, height, steps, count) <= count * one


@pytest.mark.parametrize("bad", [{"width": 0}, {"steps": -1}, {"count": 0},
                                 {"price_per_image": -1}, {"base_steps": 0}])
def test_rejects_nonsense(bad: dict[str, int]) -> None:
    args = {"width": 512, "height": 512, "steps": 20, "count": 1} | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        generation_cost(**args)


def test_cost_for_uses_settings() -> None:
    settings = Settings(price_per_image=2, price_base_pixels=512 * 512, price_base_steps=20)
    assert cost_for(settings, 512, 512, 20, 4) == 8
    assert cost_for(settings, 1024, 512, 20, 1) == 4
