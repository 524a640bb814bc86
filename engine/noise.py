"""Initial noise per the reproducibility contract: drawn on the CPU, one generator per seed.

Image i of a request with seed S starts from noise(S + i), exactly what diffusers draws for
``generator=torch.Generator("cpu").manual_seed(S + i)``. With a variation seed V and strength
t, every image starts from slerp(t, noise(S), noise(V + i)): the main seed stays S, also for
the step noise of ancestral/SDE samplers. A variation of a variation first mixes the earlier
(seed, strength) pairs into noise(S), oldest first, so it starts from the image it varies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

#: Below this sin(theta) the two noises are (anti)parallel and slerp falls back to lerp.
SLERP_EPSILON = 1e-6


def noise(seed: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The draw diffusers makes for one image: ``randn_tensor`` with a seeded CPU generator."""
    return seeded_noise(seed, shape, dtype)[0]


def seeded_noise(seed: int, shape: tuple[int, ...],
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Generator]:
    """``noise(seed)`` and its generator, advanced past that draw as in the pipeline.

    Ancestral and SDE samplers keep drawing step noise from the same generator, so it must
    be handed to the pipeline in exactly that state.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    drawn = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=dtype)
    return drawn, generator


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation over the whole flattened tensor; t=0 gives ``a`` exactly."""
    if t == 0:
        return a.clone()
    af, bf = a.double().flatten(), b.double().flatten()
    cos = torch.dot(af, bf) / (af.norm() * bf.norm())
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    if sin.abs() < SLERP_EPSILON:
        mixed = (1 - t) * af + t * bf
    else:
        mixed = (torch.sin((1 - t) * theta) * af + torch.sin(t * theta) * bf) / sin
    return mixed.reshape(a.shape).to(a.dtype)


def mix_variations(base: torch.Tensor,
                   variations: Sequence[tuple[int, float]]) -> torch.Tensor:
    """``base`` with noise(seed) slerped in at each (seed, strength), in order.

    One definition for txt2img's initial noise and the noise img2img adds to the image.
    """
    for seed, strength in variations:
        base = slerp(strength, base, noise(seed, tuple(base.shape), base.dtype))
    return base


def initial_noise(seed: int, count: int, shape: tuple[int, ...], dtype: torch.dtype,
                  variation_seed: int | None = None, variation_strength: float = 0.0,
                  earlier: Sequence[tuple[int, float]] = (),
                  ) -> tuple[list[torch.Tensor], list[torch.Generator]]:
    """Unpacked initial noise of ``shape`` (1, C, h, w) and a step-noise generator per image.

    Image i's generator is the one diffusers would hold for its main seed (S + i, or S for
    all images of a variation request) right after drawing the initial noise.
    """
    if variation_seed is None:
        pairs = [seeded_noise(seed + i, shape, dtype) for i in range(count)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    drawn, generator = seeded_noise(seed, shape, dtype)
    base = mix_variations(drawn, earlier)
    noises = [mix_variations(base, [(variation_seed + i, variation_strength)])
              for i in range(count)]
    # Every image steps with its own copy of the main seed's generator.
    state = generator.get_state()
    return noises, [torch.Generator("cpu").set_state(state) for _ in range(count)]


def vary_added_noise(scheduler: Any, variation_seed: int, variation_strength: float,
                     earlier: Sequence[tuple[int, float]] = ()) -> None:
    """Make the noise an img2img pipeline adds to the encoded image a variation's noise.

    diffusers' img2img draws that noise itself (from generator i, after the VAE's sample), so
    that draw is image i's base: the earlier variations, then (V + i, t), are mixed into it
    exactly as into txt2img's noise(S). Only the noise argument of the scheduler's
    ``add_noise`` (``scale_noise`` for flow matching) changes, on this scheduler only; the
    generators, and so the step noise, stay the pipeline's own, and t = 0 gives the unvaried
    image.
    """

    def varied(drawn: torch.Tensor) -> torch.Tensor:
        rows = [mix_variations(drawn[i:i + 1].cpu(),
                               [*earlier, (variation_seed + i, variation_strength)])
                for i in range(drawn.shape[0])]
        return torch.cat(rows).to(drawn.device)

    if hasattr(scheduler, "scale_noise"):
        scale_noise = scheduler.scale_noise
        scheduler.scale_noise = lambda sample, timestep, drawn: scale_noise(
            sample, timestep, varied(drawn))
    else:
        add_noise = scheduler.add_noise
        scheduler.add_noise = lambda samples, drawn, timesteps: add_noise(
            samples, varied(drawn), timesteps)
