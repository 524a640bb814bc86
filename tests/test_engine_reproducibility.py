"""The reproducibility contract, checked against diffusers' own pipelines on tiny models.

Image i of a request with seed S must be what the family's diffusers pipeline makes with
``generator=torch.Generator("cpu").manual_seed(S + i)``; variations and batching must follow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from engine.flux_latents import pack_latents
from engine.request import GenerationRequest, Variation, validate_request
from engine.runner import Runner, latent_shape
from engine.samplers import make_scheduler
from engine.settings import EngineSettings

PROMPT = "a red fox in the snow"
NEGATIVE = "blurry"


def _settings(folder) -> EngineSettings:
    return EngineSettings(model=str(folder), preview_every=0, device="cpu")


@pytest.fixture(scope="module")
def warm(tiny_model):
    """One Runner and one plain diffusers pipeline per family, loaded once for the module."""
    cache: dict[str, tuple[EngineSettings, Runner, DiffusionPipeline]] = {}

    def get(family: str) -> tuple[EngineSettings, Runner, DiffusionPipeline]:
        if family not in cache:
            folder = tiny_model(family)
            pipe = DiffusionPipeline.from_pretrained(folder)
            pipe.set_progress_bar_config(disable=True)
            pipe.original_scheduler_config = pipe.scheduler.config
            settings = _settings(folder)
            cache[family] = (settings, Runner(settings), pipe)
        return cache[family]

    return get


def _reference(pipe, sampler: str):
    # from the model's own config: a swapped-in scheduler's overrides (karras) must not leak
    pipe.scheduler = make_scheduler(sampler, pipe.original_scheduler_config, (sampler,))
    return pipe


def _array(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def _run(runner: Runner, *requests: GenerationRequest):
    return runner.txt2img(list(requests), lambda *_: None, lambda: False)


def _expected_slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The contract's formula, written out independently of engine.noise."""
    af, bf = a.flatten().double(), b.flatten().double()
    theta = math.acos(float(af @ bf / (af.norm() * bf.norm())))
    mixed = (math.sin((1 - t) * theta) * af + math.sin(t * theta) * bf) / math.sin(theta)
    return mixed.reshape(a.shape).float()


CASES = [
    ("sd15", "euler_a", True),
    ("sd15", "dpmpp_2m_sde_karras", False),
    ("sd15", "ddim", True),
    ("sdxl", "dpmpp_2m_karras", True),
    ("sdxl", "euler", False),
    ("flux", "flow_euler", False),
    ("sd3", "flow_euler", True),
]


@pytest.mark.parametrize(("family", "sampler", "negative"), CASES)
def test_images_match_plain_diffusers(warm, family, sampler, negative):
    settings, runner, plain = warm(family)
    request = validate_request(GenerationRequest(
        prompt=PROMPT, negative_prompt=NEGATIVE if negative else "", seed=1234, count=2,
        sampler=sampler, steps=3), settings)
    out = _run(runner, request)[0]
    assert out.seeds == [1234, 1235]
    pipe = _reference(plain, sampler)
    kwargs = {"negative_prompt": [NEGATIVE] * 2} if negative and family != "flux" else {}
    # One generator per image, as diffusers documents for batches: image i <- seed 1234 + i.
    generators = [torch.Generator("cpu").manual_seed(1234 + i) for i in range(2)]
    expected = pipe([PROMPT] * 2, height=request.height, width=request.width,
                    num_inference_steps=3, guidance_scale=request.cfg, generator=generators,
                    **kwargs).images
    for i, image in enumerate(out.images):
        assert np.array_equal(_array(image), _array(expected[i])), (family, sampler, i)
    # and image 1 alone, as its own batch of one, up to the float rounding of batch size
    alone = pipe(PROMPT, height=request.height, width=request.width, num_inference_steps=3,
                 guidance_scale=request.cfg, generator=torch.Generator("cpu").manual_seed(1235),
                 negative_prompt=NEGATIVE if kwargs else None).images[0]
    assert np.abs(_array(out.images[1]) - _array(alone)).max() <= 4


@pytest.mark.parametrize(("family", "sampler"), [("sd15", "euler_a"), ("flux", "flow_euler")])
def test_variations_follow_the_slerp_contract(warm, family, sampler):
    settings, runner, plain = warm(family)
    request = validate_request(GenerationRequest(
        prompt=PROMPT, seed=7, count=2, sampler=sampler, steps=2, variation_seed=100,
        variation_strength=0.3), settings)
    out = _run(runner, request)[0]
    assert out.seeds == [7, 7]
    assert out.metadata["variation_seeds"] == [100, 101]
    pipe = _reference(plain, sampler)
    assert request.width is not None and request.height is not None
    shape = latent_shape(runner.model(request.model), request.width, request.height)
    base = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(7))
    for i, image in enumerate(out.images):
        other = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(100 + i))
        latents = _expected_slerp(0.3, base, other)
        if family == "flux":
            latents = pack_latents(pipe, latents)
        generator = torch.Generator("cpu").manual_seed(7)
        torch.randn(shape, generator=generator)  # the pipeline's own draw, then step noise
        expected = pipe(PROMPT, height=request.height, width=request.width,
                        num_inference_steps=2, guidance_scale=request.cfg, latents=latents,
                        generator=generator).images[0]
        assert np.abs(_array(image) - _array(expected)).max() <= 1, i
    assert not np.array_equal(_array(out.images[0]), _array(out.images[1]))


def test_zero_strength_variation_is_the_main_seed_image(warm):
    settings, runner, _ = warm("sd15")
    plain = validate_request(GenerationRequest(prompt=PROMPT, seed=9, count=1), settings)
    varied = plain.model_copy(update={"variation_seed": 50, "variation_strength": 0.0,
                                      "count": 2})
    (image,) = _run(runner, plain)[0].images
    for other in _run(runner, varied)[0].images:
        assert np.array_equal(_array(image), _array(other))


def test_a_variation_of_a_variation_starts_from_the_image_it_varies(warm):
    settings, runner, _ = warm("sd15")
    grid = validate_request(GenerationRequest(prompt=PROMPT, seed=9, count=2, variation_seed=50,
                                              variation_strength=0.5), settings)
    first, clicked = _run(runner, grid)[0].images
    again = grid.model_copy(update={"earlier_variations": (Variation(seed=51, strength=0.5),),
                                    "variation_seed": 77, "variation_strength": 0.0})
    output = _run(runner, again)[0]
    assert output.metadata["earlier_variations"] == [{"seed": 51, "strength": 0.5}]
    for image in output.images:
        assert np.array_equal(_array(image), _array(clicked))
    assert not np.array_equal(_array(first), _array(clicked))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_batched_requests_get_the_images_they_get_alone(warm, family):
    settings, runner, _ = warm(family)
    first = validate_request(GenerationRequest(prompt=PROMPT, seed=3, count=2,
                                               sampler="euler_a"), settings)
    third = validate_request(GenerationRequest(prompt="a lighthouse", seed=11, count=1,
                                               sampler="euler_a"), settings)
    # another cfg and a negative prompt: a batch of its own, as engine.batching keys it
    second = validate_request(GenerationRequest(prompt="a castle at dusk", seed=90, count=1,
                                                sampler="euler_a", cfg=4.0,
                                                negative_prompt=NEGATIVE), settings)
    fourth = validate_request(GenerationRequest(prompt="a harbour", seed=500, count=2,
                                                sampler="euler_a", cfg=4.0,
                                                negative_prompt="fog"), settings)
    for batch in ((first, third), (second, fourth)):
        together = _run(runner, *batch)
        for request, batched in zip(batch, together, strict=True):
            (alone,) = _run(runner, request)
            assert batched.seeds == alone.seeds
            assert batched.metadata["batch_images"] == 3  # both shared one call
            for a, b in zip(batched.images, alone.images, strict=True):
                assert np.abs(_array(a) - _array(b)).max() <= 2
