"""Example plugin: a "📋 Params" button that shows a result's generation parameters.

The smallest useful plugin, and the one docs/plugins.md walks through. The parameters are read
back from the PNG's AUTOMATIC1111 ``parameters`` chunk, so what you see is what the file holds
and can be pasted into other tools.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import discord

from bot.checks import CheckFailure
from bot.plugin_api import Plugin, ResultAction
from engine.outputs import read_parameters

if TYPE_CHECKING:
    from bot.app import ImagineBot
    from bot.jobs.models import Job

#: Longest text shown inline; longer parameters come as a file (messages hold 2000 characters).
INLINE_LIMIT = 1900


async def show_parameters(bot: ImagineBot, interaction: discord.Interaction[Any], job: Job,
                          index: int) -> None:
    paths = job.image_paths
    text = read_parameters(paths[index]) if index < len(paths) and paths[index].exists() else None
    if text is None:
        raise CheckFailure("The image files of this result are no longer on the server.")
    if len(job.seeds) > 1:
        text += f"\nSeeds of all images: {', '.join(map(str, job.seeds))}"
    if len(text) <= INLINE_LIMIT:
        await interaction.response.send_message(f"```\n{text}\n```", ephemeral=True)
    else:
        file = discord.File(io.BytesIO(text.encode()), filename=f"{job.id}-parameters.txt")
        await interaction.response.send_message(file=file, ephemeral=True)


plugin = Plugin(
    name="example",
    description="shows the generation parameters of a result",
    actions=[ResultAction(key="params", label="Params", emoji="📋", row=4, order=0,
                          callback=show_parameters)],
)
