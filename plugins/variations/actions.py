"""What V1–V4, Vary (Subtle)/(Strong), 🔄 and a submitted 🎨 Remix form ask the engine for.

A variation keeps the image's own seed and mixes in the noise of a fresh variation seed
(the engine's slerp variations), so the new grid stays close to the image; on an image that
is itself a variation, the variation that made it is kept as an earlier one. A reroll draws a
new seed for the whole request.
"""

from __future__ import annotations

from typing import Any, Literal

import discord

from bot.plugin_api import Bot, CheckFailure, JobView, plugin_settings, start_generation
from engine.request import GenerationRequest, Variation, random_seed
from plugins.variations.settings import VariationSettings

#: The two variation strengths; their values come from the settings.
Strength = Literal["subtle", "strong"]
#: Images in a grid made from a single image (an upscale).
GRID = 4
#: Kinds of results whose buttons these are: /imagine-style grids and upscaled images.
GRID_KIND = "imagine"
SINGLE_KIND = "upscale"


def strength_value(settings: VariationSettings, strength: Strength) -> float:
    return settings.strong if strength == "strong" else settings.subtle


def variation_request(job: JobView, index: int, strength: float, max_count: int,
                      prompt: str | None = None) -> GenerationRequest:
    """A grid around image ``index``: its own seed and variations, a fresh variation seed.

    A grid keeps its image count; a single image (an upscale) becomes a grid of ``GRID``, at
    most ``max_count``.
    """
    if not job.seeds:
        raise CheckFailure("This result is not finished yet.")
    request = job.request
    earlier = request.earlier_variations
    if request.variation_seed is not None:  # image i of a variation grid has seed V + i
        earlier += (Variation(seed=request.variation_seed + index,
                              strength=request.variation_strength),)
    count = request.count if request.operation == "txt2img" else min(GRID, max_count)
    return request.model_copy(update={
        "operation": "txt2img", "params": {}, "count": count, "seed": job.seeds[index],
        "earlier_variations": earlier, "variation_seed": random_seed(count),
        "variation_strength": strength, "prompt": request.prompt if prompt is None else prompt})


def reroll_request(job: JobView, prompt: str | None = None) -> GenerationRequest:
    """The whole request again with a new seed (a new variation seed on a variation grid)."""
    request = job.request
    seed = {"variation_seed": random_seed(request.count)} if request.variation_seed is not None \
        else {"seed": None}
    return request.model_copy(update={
        **seed, "prompt": request.prompt if prompt is None else prompt})


async def vary(bot: Bot, interaction: discord.Interaction[Any], job: JobView, index: int,
               *, strength: Strength, prompt: str | None = None) -> None:
    value = strength_value(plugin_settings(bot, VariationSettings), strength)
    request = variation_request(job, index, value, bot.settings.max_count, prompt)
    await start_generation(bot, interaction, request, action="vary", kind=GRID_KIND,
                           parent_job_id=job.id)


async def reroll(bot: Bot, interaction: discord.Interaction[Any], job: JobView, index: int,
                 *, prompt: str | None = None) -> None:
    await start_generation(bot, interaction, reroll_request(job, prompt), action="reroll",
                           kind=GRID_KIND, parent_job_id=job.id)
