"""FLUX's latent packing, through diffusers' private helpers, in this one place.

FluxPipeline takes ``latents=`` as packed 2x2 patches, (B, h/2 * w/2, 4C), and packs and
unpacks them with the private static methods ``_pack_latents`` and ``_unpack_latents``.
diffusers is not pinned, so nothing else calls them: tests/test_engine_flux_latents.py fails
loudly, naming the diffusers version, if they change.
"""

from __future__ import annotations

from typing import Any

import torch


def pack_latents(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents as the (B, h/2 * w/2, 4C) patches a FLUX pipeline takes."""
    batch, channels, height, width = latents.shape
    packed: torch.Tensor = pipe._pack_latents(latents, batch, channels, height, width)
    return packed


def unpack_latents(pipe: Any, packed: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Packed patches back to (B, C, h, w) latents for an image of ``width`` x ``height`` px."""
    latents: torch.Tensor = pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)
    return latents
