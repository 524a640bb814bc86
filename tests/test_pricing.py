"""Pricing properties: what users pay grows with what they ask for, never below the base."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot._plugin_registry import PluginError, PluginRegistry, validate_plugin
from bot.generation import price
from bot.plugin_api import Plugin
from bot.pricing import cost_for, generation_cost, img2img_steps
from bot.settings import Settings
from engine.request import GenerationRequest

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


# -- plugin operations: priced by what they make (Plugin.prices) ----------------------------------

def priced_bot(plugins: PluginRegistry) -> Any:
    """What ``generation.price`` reads of the bot: its settings and its plugins."""
    plugins.discover()
    return SimpleNamespace(settings=plugins.settings, plugins=plugins)


def an_upscale(tmp_path: Path) -> GenerationRequest:
    """"Upscale" on a 1024² image of 30 steps whose file is still there."""
    source = tmp_path / "0.png"
    source.write_bytes(b"png")
    return GenerationRequest(prompt="x", seed=5, count=1, width=1024, height=1024, steps=30,
                             operation="upscale", params={"scale": 2, "image_path": str(source),
                                                          "strength": 0.35})


def test_generation_prices_an_upscale_by_its_output(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("IMAGINEBOT_UPSCALE_MODEL", raising=False)
    monkeypatch.delenv("IMAGINEBOT_UPSCALE_HIRES_STRENGTH", raising=False)
    bot = priced_bot(PluginRegistry(Settings(), entry_point_group=None))
    upscale = an_upscale(tmp_path)
    # 2048² at int(30 × 0.35) = 10 steps; the 1024² source alone costs 1.
    assert price(bot, upscale) == cost_for(bot.settings, 2048, 2048, 10, 1) == 2
    assert price(bot, upscale.model_copy(update={"operation": "txt2img", "params": {}})) == 1


def test_an_operation_no_plugin_prices_costs_a_txt2img_of_its_request(tmp_path: Path) -> None:
    bot = priced_bot(PluginRegistry(Settings(), entry_point_group=None))
    other = an_upscale(tmp_path).model_copy(update={"operation": "test_solid", "params": {}})
    assert price(bot, other) == cost_for(bot.settings, 1024, 1024, 30, 1) == 1


def test_an_operation_priced_twice_refuses_the_second_plugin() -> None:
    plugins = PluginRegistry(Settings(), packages=("plugins", "tests.plugins_fixtures.price_clash"),
                             entry_point_group=None)
    plugins.discover()
    assert "already prices operation 'upscale'" in plugins.failed["cheap-upscale"]
    assert "upscale" in plugins.plugins


@pytest.mark.parametrize(("prices", "reason"), [
    ({"txt2img": lambda bot, request: 0}, "'txt2img' is priced by the bot"),
    ({"": lambda bot, request: 0}, "bad priced operation ''"),
    ({"upscale": 3}, "price of operation 'upscale' is not callable"),
])
def test_bad_operation_prices_refuse_the_plugin(prices: dict[str, Any], reason: str) -> None:
    with pytest.raises(PluginError, match=reason):
        validate_plugin(Plugin(name="x", prices=prices))


def test_img2img_steps_are_the_steps_diffusers_runs() -> None:
    assert img2img_steps(30, 0.35) == 10
    assert img2img_steps(30, 1.0) == 30
    assert img2img_steps(2, 0.3) == 1  # int(0.6) is 0, but a pass is never free
    with pytest.raises(ValueError, match="strength"):
        img2img_steps(30, 0.0)
