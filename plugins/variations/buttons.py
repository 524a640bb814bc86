"""V1–V4, 🔄, Vary (Subtle)/(Strong) and 🎨 Remix.

A variation keeps the image's own seed and mixes in the noise of a fresh variation seed
(the engine's slerp variations), so the new grid stays close to the image; on an image that
is itself a variation, the variation that made it is kept as an earlier one. A reroll draws a
new seed for the whole request.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import discord

from bot.checks import CheckFailure
from bot.generation import start_generation
from bot.plugin_api import Plugin, ResultAction
from engine.request import GenerationRequest, Variation, random_seed

if TYPE_CHECKING:
    from bot.app import ImagineBot
    from bot.jobs.models import Job
    from bot.settings import Settings

#: The two variation strengths; their values come from the settings.
Strength = Literal["subtle", "strong"]
#: Images in a grid made from a single image (an upscale).
GRID = 4
#: Kinds of results whose buttons these are: /imagine-style grids and upscaled images.
GRID_KIND = "imagine"
SINGLE_KIND = "upscale"


def strength_value(settings: Settings, strength: Strength) -> float:
    return settings.variation_strong if strength == "strong" else settings.variation_subtle


def variation_request(job: Job, index: int, strength: Strength, settings: Settings,
                      prompt: str | None = None) -> GenerationRequest:
    """A grid around image ``index``: its own seed and variations, a fresh variation seed."""
    if not job.seeds:
        raise CheckFailure("This result is not finished yet.")
    request = job.request
    earlier = request.earlier_variations
    if request.variation_seed is not None:  # image i of a variation grid has seed V + i
        earlier += (Variation(seed=request.variation_seed + index,
                              strength=request.variation_strength),)
    count = request.count if request.operation == "txt2img" else min(GRID, settings.max_count)
    return request.model_copy(update={
        "operation": "txt2img", "params": {}, "count": count, "seed": job.seeds[index],
        "earlier_variations": earlier, "variation_seed": random_seed(count),
        "variation_strength": strength_value(settings, strength),
        "prompt": request.prompt if prompt is None else prompt})


def reroll_request(job: Job, prompt: str | None = None) -> GenerationRequest:
    """The whole request again with a new seed (a new variation seed on a variation grid)."""
    request = job.request
    seed = {"variation_seed": random_seed(request.count)} if request.variation_seed is not None \
        else {"seed": None}
    return request.model_copy(update={
        **seed, "prompt": request.prompt if prompt is None else prompt})


async def vary(bot: ImagineBot, interaction: discord.Interaction[Any], job: Job, index: int,
               *, strength: Strength, prompt: str | None = None) -> None:
    request = variation_request(job, index, strength, bot.settings, prompt)
    await start_generation(bot, interaction, request, action="vary", kind=GRID_KIND,
                           parent_job_id=job.id)


async def reroll(bot: ImagineBot, interaction: discord.Interaction[Any], job: Job, index: int,
                 *, prompt: str | None = None) -> None:
    await start_generation(bot, interaction, reroll_request(job, prompt), action="reroll",
                           kind=GRID_KIND, parent_job_id=job.id)


async def remix(bot: ImagineBot, interaction: discord.Interaction[Any], job: Job,
                index: int) -> None:
    from plugins.variations.remix import RemixModal  # it uses this module's actions

    await interaction.response.send_modal(RemixModal(bot, job, interaction.id))


grid = frozenset({GRID_KIND})
single = frozenset({SINGLE_KIND})
plugin = Plugin(
    name="variations",
    description="V1–V4 and Vary (Subtle/Strong) make a new grid around one image, 🔄 draws "
                "new seeds, 🎨 Remix edits the prompt first",
    actions=[
        ResultAction(key="v", label="V{n}", per_image=True, row=1, order=0,
                     callback=partial(vary, strength="subtle"), kinds=grid),
        ResultAction(key="reroll", emoji="🔄", row=0, order=20, callback=reroll, kinds=grid),
        ResultAction(key="subtle", label="Vary (Subtle)", row=0, order=0,
                     callback=partial(vary, strength="subtle"), kinds=single),
        ResultAction(key="strong", label="Vary (Strong)", row=0, order=1,
                     callback=partial(vary, strength="strong"), kinds=single),
        ResultAction(key="remix", label="Remix", emoji="🎨", row=1, order=10, callback=remix,
                     kinds=grid | single),
    ],
)
