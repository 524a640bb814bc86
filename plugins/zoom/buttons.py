"""The zoom buttons: Zoom Out 2x / 1.5x and ⬅️ ➡️ ⬆️ ⬇️ on U1–U4 results and on their own.

A zoom job's request is the source job's request (prompt, negative prompt, model, steps, CFG,
sampler) with the "zoom" operation, a fresh seed, the output's size and the move's params
(:mod:`plugins.zoom.move`). Its result is one image of kind ``zoom``, which shows the same
buttons again. The upscale and variations buttons stay off it: they remake their sources by
txt2img from the request, which cannot make a zoomed picture.
"""

from __future__ import annotations

import asyncio
import io
from functools import partial
from typing import Any

import discord
from PIL import Image

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
from plugins.zoom import KIND, OPERATION, PAN_FACTOR, PANS, ZOOM_FACTORS, Direction
from plugins.zoom.geometry import plan
from plugins.zoom.move import Move, digest
from plugins.zoom.pricing import zoom_price
from plugins.zoom.settings import ZoomSettings

#: The results that show the buttons: upscaled images (U1–U4) and zoomed ones.
SOURCE_KINDS = frozenset({"upscale", KIND})
#: The upscale plugin's params of a U1–U4 result (plugins/upscale: ``scale`` 2, the first
#: step); "Upscale (2x)" results are larger and get no zoom, as on Midjourney.
FIRST_UPSCALE = ("upscale", 2)


def zoom_request(job: JobView, index: int, direction: Direction, factor: float, *,
                 limit: int, inpaint_model: str | None) -> GenerationRequest:
    """What a click asks the engine for; reads the source image (call it off the loop)."""
    if not job.seeds:
        raise CheckFailure("This result is not finished yet.")
    path = job.image_paths[index]
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
    except OSError:
        raise CheckFailure("The image of this result is no longer on the server, so it "
                           "cannot be zoomed.") from None
    placed = plan(size, direction, factor, limit)
    move = Move(direction, factor, str(path), digest(data), placed.box, inpaint_model)
    width, height = placed.size
    return job.request.model_copy(update={
        "operation": OPERATION, "params": move.params(), "count": 1, "seed": None,
        "width": width, "height": height, "variation_seed": None, "variation_strength": 0.0,
        "earlier_variations": (), "source_image": None, "strength": None})


def zoomable(bot: Bot, job: JobView) -> bool:
    """Whether the buttons show: on U1–U4 results and on zoomed images."""
    request = job.request
    return job.kind == KIND or (request.operation, request.params.get("scale")) == FIRST_UPSCALE


async def move(bot: Bot, interaction: discord.Interaction[Any], job: JobView, index: int, *,
               direction: Direction, factor: float) -> None:
    if not zoomable(bot, job):  # a message from before a change may still carry the button
        raise CheckFailure("Zoom Out and Pan work on images made with U1–U4.")
    request = await asyncio.to_thread(
        zoom_request, job, index, direction, factor, limit=bot.settings.max_pixels,
        inpaint_model=plugin_settings(bot, ZoomSettings).inpaint_model)
    await start_generation(bot, interaction, request, action="zoom", kind=KIND,
                           parent_job_id=job.id)


def _zoom_action(factor: float, order: int) -> ResultAction:
    return ResultAction(key=f"out_{factor:g}x".replace(".", "_"), label=f"Zoom Out {factor:g}x",
                        emoji="🔍", row=2, order=order, kinds=SOURCE_KINDS, visible=zoomable,
                        callback=partial(move, direction="out", factor=factor))


def _pan_action(direction: Direction, emoji: str, order: int) -> ResultAction:
    return ResultAction(key=direction, emoji=emoji, row=3, order=order, kinds=SOURCE_KINDS,
                        visible=zoomable,
                        callback=partial(move, direction=direction, factor=PAN_FACTOR))


plugin = Plugin(
    name="zoom",
    description="Zoom Out 2x/1.5x and ⬅️ ➡️ ⬆️ ⬇️ paint around an upscaled image",
    api_versions=range(1, 2),
    settings=ZoomSettings,
    operation_modules=["plugins.zoom.engine_ops"],
    prices={OPERATION: zoom_price},
    actions=[
        *(_zoom_action(factor, order) for order, factor in enumerate(ZOOM_FACTORS)),
        *(_pan_action(direction, emoji, order) for order, (direction, emoji) in enumerate(PANS)),
    ],
)
