"""Example plugin: a "📋 Params" button that shows a result's generation parameters.

The smallest useful plugin, and the one docs/plugins.md walks through: it declares the plugin
API version it was written for, reads the job through the read-only job view and has one
setting of its own, ``IMAGINEBOT_EXAMPLE_INLINE_LIMIT``. The parameters are read back from the
PNG's AUTOMATIC1111 ``parameters`` chunk, so what you see is what the file holds and can be
pasted into other tools.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar

import discord
from pydantic import Field

from bot.plugin_api import (
    Bot,
    CheckFailure,
    JobView,
    Plugin,
    PluginSettings,
    ResultAction,
    plugin_settings,
)
from engine.outputs import read_parameters


class ExampleSettings(PluginSettings):
    namespace: ClassVar[str] = "example"

    inline_limit: int = Field(1900, ge=10, le=1990, description="Longest parameters text shown "
                              "in the message by 📋 Params; longer text comes as a file.")


async def show_parameters(bot: Bot, interaction: discord.Interaction[Any], job: JobView,
                          index: int) -> None:
    paths = job.image_paths
    text = read_parameters(paths[index]) if index < len(paths) and paths[index].exists() else None
    if text is None:
        raise CheckFailure("The image files of this result are no longer on the server.")
    if len(job.seeds) > 1:
        text += f"\nSeeds of all images: {', '.join(map(str, job.seeds))}"
    if len(text) <= plugin_settings(bot, ExampleSettings).inline_limit:
        await interaction.response.send_message(f"```\n{text}\n```", ephemeral=True)
    else:
        file = discord.File(io.BytesIO(text.encode()), filename=f"{job.id}-parameters.txt")
        await interaction.response.send_message(file=file, ephemeral=True)


plugin = Plugin(
    name="example",
    description="shows the generation parameters of a result",
    api_versions=range(1, 2),  # written for version 1 of bot.plugin_api
    settings=ExampleSettings,
    actions=[ResultAction(key="params", label="Params", emoji="📋", row=4, order=0,
                          callback=show_parameters)],
)
