"""Noise and slerp per the contract, and the latent -> RGB preview map."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from engine.noise import initial_noise, noise, slerp
from engine.previews import LATENT_RGB, latents_to_rgb, preview_image

SHAPE = (1, 4, 8, 8)


def test_noise_is_the_seeded_cpu_draw():
    expected = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(5))
    assert torch.equal(noise(5, SHAPE, torch.float32), expected)


@given(t=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
def test_slerp_ends_and_norm(t, seed):
    a, b = noise(seed, SHAPE, torch.float32), noise(seed + 1, SHAPE, torch.float32)
    assert torch.equal(slerp(0.0, a, b), a)
    assert torch.allclose(slerp(1.0, a, b), b, atol=1e-5)
    # on unit vectors slerp stays on the sphere and moves t of the way along the arc
    a, b = a / a.norm(), b / b.norm()
    mixed = slerp(t, a, b)
    assert abs(float(mixed.norm()) - 1.0) < 1e-5
    theta = math.acos(float((a.flatten() @ b.flatten()) / (a.norm() * b.norm())))
    angle = math.acos(min(1.0, float((a.flatten() @ mixed.flatten()) / (a.norm() * mixed.norm()))))
    assert abs(angle - t * theta) < 1e-3


def test_parallel_noise_falls_back_to_lerp():
    a = noise(1, SHAPE, torch.float32)
    assert torch.allclose(slerp(0.5, a, 2 * a), 1.5 * a)


def test_initial_noise_seeds():
    plain, generators = initial_noise(10, 3, SHAPE, torch.float32)
    assert [torch.equal(n, noise(10 + i, SHAPE, torch.float32)) for i, n in enumerate(plain)] \
        == [True] * 3
    # each generator is where the pipeline's would be after its own draw
    fresh = torch.Generator("cpu").manual_seed(11)
    torch.randn(SHAPE, generator=fresh)
    assert torch.equal(torch.randn(3, generator=generators[1]), torch.randn(3, generator=fresh))
    varied, _ = initial_noise(10, 2, SHAPE, torch.float32, variation_seed=50,
                              variation_strength=0.0)
    assert all(torch.equal(v, noise(10, SHAPE, torch.float32)) for v in varied)


def test_earlier_variations_are_mixed_in_first_oldest_first():
    def n(seed: int) -> torch.Tensor:
        return noise(seed, SHAPE, torch.float32)

    chained, generators = initial_noise(10, 2, SHAPE, torch.float32, variation_seed=70,
                                        variation_strength=0.3, earlier=[(50, 0.25), (60, 0.5)])
    start = slerp(0.5, slerp(0.25, n(10), n(50)), n(60))
    for i, mixed in enumerate(chained):
        assert torch.allclose(mixed, slerp(0.3, start, n(70 + i)))
    # the step noise still comes from the main seed
    fresh = torch.Generator("cpu").manual_seed(10)
    torch.randn(SHAPE, generator=fresh)
    assert torch.equal(torch.randn(3, generator=generators[1]), torch.randn(3, generator=fresh))
    # at strength 0 a variation of image 1 of the (50, 0.25) grid starts from that image
    grid, _ = initial_noise(10, 2, SHAPE, torch.float32, variation_seed=49,
                            variation_strength=0.25)
    again, _ = initial_noise(10, 1, SHAPE, torch.float32, variation_seed=99,
                             variation_strength=0.0, earlier=[(50, 0.25)])
    assert torch.equal(again[0], grid[1])


def test_published_factors_apply_per_channel():
    weights, bias = LATENT_RGB["sdxl"]
    latent = torch.zeros(1, 4, 2, 2)
    latent[0, 1] = 1.0
    rgb = latents_to_rgb(latent, "sdxl")
    expected = [(weights[1][c] + bias[c] + 1) / 2 for c in range(3)]
    assert torch.allclose(rgb[0, :, 0, 0], torch.tensor(expected))
    assert len(LATENT_RGB["flux"][0]) == 16 and len(LATENT_RGB["sd3"][0]) == 16


def test_unknown_channel_counts_fall_back_to_first_channels():
    latent = torch.linspace(-1, 1, 2 * 3 * 3).reshape(1, 2, 3, 3)
    rgb = latents_to_rgb(latent, "flux")  # 2 channels match no table
    assert torch.allclose(rgb[0, 2], rgb[0, 0])
    assert torch.allclose(rgb[0, 0], (latent[0, 0] + 1) / 2)
    image = preview_image(torch.zeros(3, 4, 4, 4), "sd15")
    assert image.size[0] == image.size[1]  # 3 images tile into 2x2 cells
