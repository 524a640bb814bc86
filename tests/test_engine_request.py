"""Request validation: defaults filled from the model, each bad value named in one sentence."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from engine.request import GenerationRequest, RequestError, validate_request
from engine.settings import EngineSettings


@pytest.fixture(scope="module")
def sd15(tiny_model) -> EngineSettings:
    return EngineSettings(model=str(tiny_model("sd15")), max_pixels=512 * 512)


@pytest.fixture(scope="module")
def flux(tiny_model) -> EngineSettings:
    return EngineSettings(model=str(tiny_model("flux")))


def test_defaults_come_from_the_model(sd15):
    resolved = validate_request(GenerationRequest(prompt="a cat"), sd15)
    assert (resolved.width, resolved.height, resolved.steps) == (32, 32, 2)
    assert resolved.sampler == "dpmpp_2m_karras" and resolved.cfg == 7.0
    assert resolved.model == sd15.model
    assert resolved.seed is not None and 0 <= resolved.seed < 2**32
    again = validate_request(GenerationRequest(prompt="a cat"), sd15)
    assert again.job_id != resolved.job_id


def test_given_values_are_kept(sd15):
    request = GenerationRequest(prompt="a cat", width=64, height=48, steps=9, cfg=3.5,
                                sampler="euler_a", seed=0, count=1)
    resolved = validate_request(request, sd15)
    assert (resolved.width, resolved.height, resolved.steps, resolved.cfg) == (64, 48, 9, 3.5)
    assert (resolved.sampler, resolved.seed, resolved.count) == ("euler_a", 0, 1)


BAD = [
    ({"prompt": "  "}, "prompt", "prompt must not be empty"),
    ({"steps": 0}, "steps", "steps must be between 1 and 100"),
    ({"steps": 101}, "steps", "steps must be between 1 and 100"),
    ({"cfg": -1.0}, "cfg", "cfg must be between 0 and 30"),
    ({"cfg": 30.5}, "cfg", "cfg must be between 0 and 30"),
    ({"sampler": "plms"}, "sampler", "unknown sampler 'plms'"),
    ({"sampler": "flow_euler"}, "sampler", "sampler flow_euler does not work with sd15"),
    ({"count": 0}, "count", "count must be between 1 and 4"),
    ({"count": 5}, "count", "count must be between 1 and 4"),
    ({"width": 4}, "width", "width must be at least 8 pixels"),
    ({"width": 1024, "height": 1024}, "size", "size 1024x1024 is too large"),
    ({"seed": -1}, "seed", "seed must be between 0 and 4294967292 for 4 images"),
    ({"seed": 2**32 - 1}, "seed", "seed must be between 0 and 4294967292 for 4 images"),
    ({"seed": 2**32, "count": 1}, "seed", "seed must be between 0 and 4294967295"),
    ({"variation_seed": 2**32 - 1, "count": 2}, "variation_seed",
     "variation_seed must be between 0 and 4294967294 for 2 images"),
    ({"variation_seed": 2**40}, "variation_seed", "variation_seed must be between"),
    ({"variation_strength": 1.5}, "variation_strength", "variation_strength must be between 0"),
    ({"earlier_variations": [{"seed": 1, "strength": 0.2}]}, "earlier_variations",
     "earlier variations need a variation_seed"),
    ({"variation_seed": 1, "earlier_variations": [{"seed": 1, "strength": 0.2}] * 17},
     "earlier_variations", "an image can be varied at most 16 times in a row"),
    ({"variation_seed": 1, "earlier_variations": [{"seed": -1, "strength": 0.2}]},
     "variation_seed", "variation_seed must be between 0"),
    ({"variation_seed": 1, "earlier_variations": [{"seed": 1, "strength": 2.0}]},
     "variation_strength", "variation_strength must be between 0"),
    ({"model": "someone/else"}, "model", "that model is not available here; pick one from"),
    ({"operation": ""}, "operation", "unknown operation"),
]


@pytest.mark.parametrize(("change", "field", "message"), BAD)
def test_each_bad_value_gets_one_clear_message(sd15, change, field, message):
    request = GenerationRequest(**{"prompt": "a cat", **change})
    with pytest.raises(RequestError) as caught:
        validate_request(request, sd15)
    assert caught.value.field == field
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_known_operations_are_checked_when_given(sd15):
    request = GenerationRequest(prompt="a cat", operation="upscale")
    assert validate_request(request, sd15, operations={"txt2img", "upscale"}).operation == "upscale"
    with pytest.raises(RequestError, match="unknown operation 'upscale'"):
        validate_request(request, sd15, operations={"txt2img"})


def test_flow_samplers_only_for_flow_models(flux):
    with pytest.raises(RequestError, match="sampler ddim does not work with flux"):
        validate_request(GenerationRequest(prompt="x", sampler="ddim"), flux)
    assert validate_request(GenerationRequest(prompt="x"), flux).sampler == "flow_euler"


def test_a_missing_model_is_a_request_error_with_details_only_for_the_shell(tmp_path):
    missing = str(tmp_path / "nothing-here")
    settings = EngineSettings(model=missing)
    with pytest.raises(RequestError, match="was not found"):
        validate_request(GenerationRequest(prompt="x"), settings, any_model=True)
    with pytest.raises(RequestError) as caught:
        validate_request(GenerationRequest(prompt="x"), settings)
    assert str(caught.value) == ("model nothing-here cannot be used right now; the bot's admin "
                                 "can see why in its log")


@hsettings(max_examples=60, deadline=None)
@given(width=st.integers(8, 700), height=st.integers(8, 700),
       family=st.sampled_from(["sd15", "flux"]))
def test_sizes_snap_to_the_family_multiple_or_are_rejected(tiny_model, width, height, family):
    settings = EngineSettings(model=str(tiny_model(family)), max_pixels=256 * 256)
    multiple = 16 if family == "flux" else 8
    request = GenerationRequest(prompt="x", width=width, height=height)
    try:
        resolved = validate_request(request, settings)
    except RequestError as error:
        snapped_w = max(multiple, round(width / multiple) * multiple)
        snapped_h = max(multiple, round(height / multiple) * multiple)
        too_small = min(width, height) < multiple
        assert too_small or snapped_w * snapped_h > settings.max_pixels, str(error)
        return
    assert resolved.width is not None and resolved.height is not None
    assert resolved.width % multiple == 0 and resolved.height % multiple == 0
    assert abs(resolved.width - width) <= multiple // 2
    assert abs(resolved.height - height) <= multiple // 2
    assert resolved.width * resolved.height <= settings.max_pixels


@given(earlier=st.lists(st.tuples(st.integers(-5, 2**32 + 5), st.floats(allow_nan=True)),
                        max_size=20),
       variation_seed=st.one_of(st.none(), st.integers(0, 10)))
def test_earlier_variations_are_in_range_or_refused(sd15, earlier, variation_seed):
    request = GenerationRequest(prompt="x", variation_seed=variation_seed, earlier_variations=[
        {"seed": seed, "strength": strength} for seed, strength in earlier])
    try:
        resolved = validate_request(request, sd15)
    except RequestError as error:
        assert "\n" not in str(error)
        return
    assert not earlier or resolved.variation_seed is not None
    assert len(resolved.earlier_variations) <= 16
    assert all(0 <= v.seed < 2**32 and 0 <= v.strength <= 1 for v in resolved.earlier_variations)


@given(count=st.integers(1, 4), varied=st.booleans())
def test_every_image_has_a_seed_a_user_can_type_back(sd15, count, varied):
    request = GenerationRequest(prompt="x", count=count, seed=None if varied else 2**32 - count,
                                variation_seed=2**32 - count if varied else None)
    resolved = validate_request(request, sd15)
    assert resolved.seed is not None
    seeds = [resolved.seed] * count if varied else [resolved.seed + i for i in range(count)]
    variation_seeds = [(resolved.variation_seed or 0) + i for i in range(count)]
    assert max(seeds + variation_seeds) < 2**32


def test_a_validated_request_validates_again() -> None:
    """The bot validates, stores the resolved request, and validates it again after a restart."""
    settings = EngineSettings()  # the shipped demo model, named "demo"
    resolved = validate_request(GenerationRequest(prompt="a red circle"), settings)
    assert resolved.model != "demo"
    assert validate_request(resolved, settings) == resolved
    with pytest.raises(RequestError, match="not available here"):
        validate_request(resolved.model_copy(update={"model": "/elsewhere/model"}), settings)
