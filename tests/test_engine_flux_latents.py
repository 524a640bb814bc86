"""diffusers' private FLUX latent helpers, which engine.flux_latents wraps, still work as used.

diffusers is not pinned; if a release renames or reshapes ``_pack_latents`` or
``_unpack_latents``, these tests say so by name instead of FLUX images silently going wrong.
"""

from __future__ import annotations

import inspect

import diffusers
import pytest
import torch
from diffusers import FluxPipeline

from engine.flux_latents import pack_latents, unpack_latents
from engine.runner import Runner, latent_shape
from engine.settings import EngineSettings

CHANGED = (f"diffusers {diffusers.__version__} changed FluxPipeline.{{}}: "
           "update engine/flux_latents.py")


@pytest.mark.parametrize(("name", "parameters"), [
    ("_pack_latents", ["latents", "batch_size", "num_channels_latents", "height", "width"]),
    ("_unpack_latents", ["latents", "height", "width", "vae_scale_factor"]),
])
def test_flux_pipeline_keeps_its_private_latent_helpers(name, parameters):
    method = inspect.getattr_static(FluxPipeline, name, None)
    assert isinstance(method, staticmethod), CHANGED.format(f"{name} (no longer a staticmethod)")
    signature = list(inspect.signature(method.__func__).parameters)
    assert signature == parameters, CHANGED.format(f"{name}{tuple(signature)}")


@pytest.fixture(scope="module")
def flux(tiny_model):
    runner = Runner(EngineSettings(model=str(tiny_model("flux")), device="cpu"))
    return runner.model(runner.settings.model)


@pytest.mark.parametrize(("width", "height"), [(32, 32), (64, 32), (32, 96)])
def test_pack_then_unpack_gives_back_the_same_latents(flux, width, height):
    loaded = flux
    shape = latent_shape(loaded, width, height)
    latents = torch.randn((3, *shape[1:]), generator=torch.Generator().manual_seed(0))
    packed = pack_latents(loaded.pipeline, latents)
    # FLUX's tokens: one per 2x2 latent patch, four channels' worth each
    assert packed.shape == (3, shape[2] * shape[3] // 4, shape[1] * 4), CHANGED.format(
        f"_pack_latents (shape {tuple(packed.shape)})")
    unpacked = unpack_latents(loaded.pipeline, packed, width, height)
    assert torch.equal(unpacked, latents), CHANGED.format("_unpack_latents (no round trip)")
