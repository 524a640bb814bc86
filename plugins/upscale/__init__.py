"""Upscale: U1–U4 on a grid, "Upscale (2x)" on an upscaled image.

This module stays free of bot imports: the engine worker imports ``plugins.upscale.engine_ops``,
which imports this package first, and the worker must not load discord.py or the database
layer. The buttons live in :mod:`plugins.upscale.buttons`, loaded by :func:`setup` in the bot.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.plugin_api import Plugin

#: The engine operation name; its params are ``scale`` (the result's size over the request's
#: width x height, a power of STEP), ``image_path`` (the image at scale / STEP, which may be
#: gone) and ``strength`` (the denoising strength of the hires-fix pass).
OPERATION = "upscale"
#: Each upscale multiplies width and height by this.
STEP = 2


def hires_steps(steps: int | None, strength: float) -> int:
    """The sampler steps a hires fix asks for: enough that img2img at ``strength`` runs one.

    img2img runs ``int(steps * strength)`` steps; the worker (engine_ops.hires_fix) asks for
    this many and the price (pricing.enlarge_price) charges what they run.
    """
    return max(steps or 1, math.ceil(1 / strength))


def setup() -> Plugin:
    from plugins.upscale.buttons import plugin

    return plugin
