"""The upscale buttons: U1–U4 on grids and "Upscale (2x)" on upscaled images.

An upscale job's request is the count-1 request that makes its source image (seed S + i, or
the variation seed V + i of a variation grid), with the "upscale" operation: the engine can
remake a deleted source from it, and the result's own buttons know the image's seed and size.
"""

from __future__ import annotations

from typing import Any

import discord

from bot.plugin_api import (
    Bot,
    CheckFailure,
    JobView,
    Plugin,
    ResultAction,
    plugin_settings,
    start_generation,
)
from engine.request import GenerationRequest
from plugins.upscale import OPERATION, STEP
from plugins.upscale.pricing import upscale_price
from plugins.upscale.settings import UpscaleSettings

#: The job kind of upscaled images, which picks the buttons of their messages.
KIND = "upscale"


def image_request(job: JobView, index: int) -> GenerationRequest:
    """The count-1 request that makes image ``index`` of ``job`` again.

    Image i of seed S is seed S + i alone; image i of a variation grid keeps S and has the
    variation seed V + i (engine/noise.py).
    """
    request = job.request
    update: dict[str, Any] = {"count": 1, "seed": job.seeds[index]}
    if request.variation_seed is not None:
        update["variation_seed"] = request.variation_seed + index
    return request.model_copy(update=update)


def upscale_request(job: JobView, index: int, settings: UpscaleSettings) -> GenerationRequest:
    """What a click on U{index + 1} (or on "Upscale (2x)") asks the engine for."""
    if not job.seeds:
        raise CheckFailure("This result is not finished yet.")
    if job.request.operation == OPERATION:
        source, scale = job.request, int(job.request.params["scale"]) * STEP
    else:
        source, scale = image_request(job, index), STEP
    assert source.width and source.height  # stored requests are validated
    width, height = source.width * scale, source.height * scale
    if width * height > settings.max_pixels:
        raise CheckFailure(f"This image is already as large as this bot makes them "
                           f"({width // STEP}x{height // STEP}).")
    return source.model_copy(update={"operation": OPERATION, "params": {
        "scale": scale, "image_path": str(job.image_paths[index]),
        "strength": settings.hires_strength}})


def can_upscale_again(bot: Bot, job: JobView) -> bool:
    """Whether "Upscale" on this image would stay within the size limit (else it is hidden)."""
    try:
        upscale_request(job, 0, plugin_settings(bot, UpscaleSettings))
    except CheckFailure:
        return False
    return True


async def upscale(bot: Bot, interaction: discord.Interaction[Any], job: JobView,
                  index: int) -> None:
    request = upscale_request(job, index, plugin_settings(bot, UpscaleSettings))
    await start_generation(bot, interaction, request, action="upscale", kind=KIND,
                           parent_job_id=job.id)


plugin = Plugin(
    name="upscale",
    description="U1–U4 make one image of a grid twice as large; Upscale (2x) goes on, up to "
                "a limit",
    api_versions=range(1, 2),
    settings=UpscaleSettings,
    operation_modules=["plugins.upscale.engine_ops"],
    prices={OPERATION: upscale_price},
    actions=[
        ResultAction(key="u", label="U{n}", per_image=True, row=0, order=0, callback=upscale),
        ResultAction(key="again", label=f"Upscale ({STEP}x)", kinds=frozenset({KIND}),
                     row=0, order=10, callback=upscale, visible=can_upscale_again),
    ],
)
