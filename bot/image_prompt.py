"""An /imagine attachment as the image prompt of a request (img2img).

The attachment's declared size is checked before anything is downloaded, and the bytes again
after; decoding (engine.image_prompt: Pillow's bomb limit, PNG/JPEG/WebP only) runs in a thread,
fitted to the size the request resolves to, and the result is stored with the jobs' outputs.
All of it happens before the request reaches bot.generation, so a bad image is refused before
anything is held.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord

from engine.image_prompt import check_size, prepare
from engine.request import (
    DEFAULT_STRENGTH,
    GenerationRequest,
    RequestError,
    check_strength,
    validate_request,
)

if TYPE_CHECKING:
    from bot.app import ImagineBot


async def with_image_prompt(bot: ImagineBot, request: GenerationRequest,
                            attachment: discord.Attachment,
                            strength: float | None) -> GenerationRequest:
    """``request`` with ``attachment`` as its image prompt; RequestError for a bad one."""
    settings = bot.settings
    check_strength(DEFAULT_STRENGTH if strength is None else strength)
    limit = settings.image_prompt_max_bytes
    check_size(attachment.size, limit)
    # The size the image is fitted to; start_generation validates the whole request again.
    resolved = await asyncio.to_thread(validate_request, request, settings)
    assert resolved.width and resolved.height
    try:
        data = await attachment.read()
    except discord.HTTPException:
        raise RequestError("image", "the image could not be downloaded from Discord; please "
                           "attach it again") from None
    digest = await asyncio.to_thread(prepare, data, resolved.width, resolved.height,
                                     settings.output_dir, limit)
    return request.model_copy(update={"source_image": digest, "strength": strength,
                                      "width": resolved.width, "height": resolved.height})
