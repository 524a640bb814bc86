"""The variation and reroll requests, and the remix form's parsing, without Discord."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.plugin_api import CheckFailure, JobView
from bot.settings import Settings
from engine.outputs import a1111_parameters, parse_parameters
from engine.request import (
    MAX_VARIATION_DEPTH,
    GenerationRequest,
    RequestError,
    Variation,
    validate_request,
)
from plugins.variations.actions import (
    reroll_request,
    strength_value,
    variation_request,
)
from plugins.variations.remix import parse_image, parse_strength
from plugins.variations.settings import VariationSettings

#: The default strengths and image limit.
SUBTLE, STRONG, MAX_COUNT = 0.25, 0.6, 4


def job(request: GenerationRequest, seeds: list[int], kind: str = "imagine") -> JobView:
    """What a click hands the plugin: the read-only view of a (finished, unless no seeds) job."""
    return JobView(id="a" * 32, kind=kind, owner_id=1, request=request,
                   image_paths=tuple(Path(f"/out/{i}.png") for i in range(len(seeds))),
                   seeds=tuple(seeds), image_count=len(seeds) or request.count,
                   parent_job_id=None, created_at=datetime(2025, 1, 1, tzinfo=UTC))


GRID = GenerationRequest(prompt="a red cat", negative_prompt="blurry", seed=10, count=4,
                         width=32, height=32, steps=2, cfg=5.0, sampler="euler")


def test_a_variation_keeps_everything_but_the_seeds():
    varied = variation_request(job(GRID, [10, 11, 12, 13]), 2, SUBTLE, MAX_COUNT)
    assert varied.seed == 12 and varied.variation_strength == 0.25
    assert varied.variation_seed is not None
    unchanged = ("prompt", "negative_prompt", "count", "width", "height", "steps", "cfg",
                 "sampler", "model")
    assert all(getattr(varied, name) == getattr(GRID, name) for name in unchanged)
    again = variation_request(job(GRID, [10, 11, 12, 13]), 2, SUBTLE, MAX_COUNT)
    assert again.variation_seed != varied.variation_seed  # a fresh seed on every click


def test_a_variation_of_an_upscaled_image_is_a_grid_at_the_source_size():
    upscaled = GRID.model_copy(update={"count": 1, "seed": 12, "operation": "upscale",
                                       "params": {"scale": 2, "image_path": "/out/2.png"}})
    varied = variation_request(job(upscaled, [12], kind="upscale"), 0, STRONG, 3,
                               prompt="a blue dog")
    assert (varied.operation, varied.params, varied.count) == ("txt2img", {}, 3)
    assert (varied.seed, varied.variation_strength, varied.prompt) == (12, 0.6, "a blue dog")
    assert (varied.width, varied.height) == (32, 32)


def test_a_variation_of_a_variation_keeps_the_clicked_image_as_an_earlier_one():
    first = Variation(seed=3, strength=0.6)
    variation_grid = GRID.model_copy(update={"variation_seed": 5, "variation_strength": 0.25,
                                             "earlier_variations": (first,)})
    varied = variation_request(job(variation_grid, [10] * 4), 2, SUBTLE, MAX_COUNT)
    # image 3 of that grid is seed 10 with variation seed 5 + 2
    assert varied.seed == 10
    assert varied.earlier_variations == (first, Variation(seed=7, strength=0.25))
    assert varied.variation_seed is not None and varied.variation_strength == 0.25
    # an upscaled image's request already names its own variation seed (offset 0)
    upscaled = variation_grid.model_copy(update={"count": 1, "variation_seed": 7,
                                                 "operation": "upscale"})
    from_upscale = variation_request(job(upscaled, [10], kind="upscale"), 0, STRONG,
                                     MAX_COUNT)
    assert from_upscale.earlier_variations == varied.earlier_variations


def test_variations_stop_at_the_engine_depth_limit(tiny_model):
    deepest = GRID.model_copy(update={
        "variation_seed": 5, "variation_strength": 0.25,
        "earlier_variations": (Variation(seed=1, strength=0.25),) * MAX_VARIATION_DEPTH})
    too_deep = variation_request(job(deepest, [10] * 4), 0, SUBTLE, MAX_COUNT)
    assert len(too_deep.earlier_variations) == MAX_VARIATION_DEPTH + 1
    # start_generation validates before it holds credits, so the click is refused with this
    with pytest.raises(RequestError, match="varied at most 16 times in a row"):
        validate_request(too_deep, Settings(model=str(tiny_model("sd15"))))
    # a reroll of that grid only changes its last variation seed
    assert len(reroll_request(job(deepest, [10] * 4)).earlier_variations) == MAX_VARIATION_DEPTH


def test_an_image_prompt_grid_and_its_upscale_are_varied_from_the_same_image(tiny_model):
    """V keeps the image prompt and its strength and adds the variation, as for txt2img; the
    PNG parameters record both."""
    source = "c" * 64
    prompted = GRID.model_copy(update={"source_image": source, "strength": 0.45})
    upscaled = prompted.model_copy(update={
        "count": 1, "seed": 12, "operation": "upscale",
        "params": {"scale": 2, "image_path": "/out/2.png", "strength": 0.35}})
    settings = Settings(model=str(tiny_model("sd15")))
    for varied in (variation_request(job(prompted, [10, 11, 12, 13]), 2, SUBTLE, MAX_COUNT),
                   variation_request(job(upscaled, [12], kind="upscale"), 0, SUBTLE, 4)):
        varied = validate_request(varied, settings)
        assert (varied.source_image, varied.strength, varied.seed) == (source, 0.45, 12)
        assert (varied.operation, varied.params, varied.count) == ("txt2img", {}, 4)
        assert varied.variation_seed is not None and varied.variation_strength == SUBTLE
        text = a1111_parameters(varied, 12, {}, index=1)  # image 2 of the new grid
        assert f"Init image hash: {source}" in text and "Denoising strength: 0.45" in text
        assert f"Variation seed: {varied.variation_seed + 1}" in text
        parsed = parse_parameters(text)
        assert (parsed["source_image"], parsed["strength"], parsed["variation_strength"],
                parsed["variation_seed"]) == (source, 0.45, SUBTLE, varied.variation_seed + 1)


def test_a_reroll_draws_a_new_seed_or_a_new_variation_seed():
    assert reroll_request(job(GRID, [10, 11, 12, 13])).seed is None  # drawn at validation
    variation_grid = GRID.model_copy(update={"variation_seed": 5, "variation_strength": 0.25})
    rerolled = reroll_request(job(variation_grid, [10] * 4), prompt="new")
    assert rerolled.seed == 10 and rerolled.variation_seed not in (None, 5)
    assert rerolled.prompt == "new" and rerolled.variation_strength == 0.25


def test_an_unfinished_job_has_nothing_to_vary():
    with pytest.raises(CheckFailure, match="not finished"):
        variation_request(job(GRID, []), 0, SUBTLE, MAX_COUNT)


@pytest.mark.parametrize(("text", "strength"), [
    ("subtle", "subtle"), (" Strong ", "strong"), ("", "subtle")])
def test_strength_words(text: str, strength: str):
    assert parse_strength(text) == strength


def test_variation_strengths_come_from_the_settings():
    defaults = VariationSettings.model_fields
    assert (defaults["subtle"].default, defaults["strong"].default) == (SUBTLE, STRONG)
    assert Settings.model_fields["max_count"].default == MAX_COUNT
    tuned = VariationSettings(subtle=0.1, strong=0.9)
    grid = job(GRID, [10, 11, 12, 13])
    strength = strength_value(tuned, "subtle")
    assert variation_request(grid, 0, strength, MAX_COUNT).variation_strength == 0.1
    strength = strength_value(tuned, "strong")
    assert variation_request(grid, 0, strength, MAX_COUNT).variation_strength == 0.9


@given(st.text(max_size=4), st.integers(min_value=1, max_value=16))
@example("1\x1f", 1)  # str.strip() drops \x1f, int() does not
def test_image_numbers_are_parsed_or_refused_with_a_sentence(text: str, count: int):
    try:
        index: Any = parse_image(text, count)
    except CheckFailure as refusal:
        assert f"from 1 to {count}" in refusal.message
        return
    if text.strip():
        assert index == int(text.strip()) - 1 and 0 <= index < count
    else:
        assert index is None
