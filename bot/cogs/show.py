"""/show: post a finished job again, with buttons that work like the original's."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import checks
from bot.generation import refuse_deferred, result_embed, upload_limit
from bot.jobs.models import JobState
from bot.uploads import TooLarge, fit_upload

if TYPE_CHECKING:
    from bot.app import ImagineBot


class Show(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="show", description="Post a finished job again, with its "
                          "buttons.")
    @app_commands.describe(job_id="The job's id (in the footer of its result).")
    @app_commands.guild_only()
    async def show(self, interaction: discord.Interaction[ImagineBot],
                   job_id: app_commands.Range[str, 1, 40]) -> None:
        job = await self.bot.jobs.get(job_id.strip())
        if job is None or job.state != JobState.DELIVERED or job.result is None:
            await checks.refuse(interaction, f"There is no finished job `{job_id}`.")
            return
        await interaction.response.defer(thinking=True)
        grid = Path(job.result.get("grid") or job.result["images"][0]["path"])
        try:
            upload = await asyncio.to_thread(fit_upload, grid, upload_limit(interaction))
        except (FileNotFoundError, TooLarge):
            await refuse_deferred(interaction, "The images of this job are no longer available.")
            return
        await interaction.edit_original_response(
            embed=result_embed(job, upload.filename, None, upload.note),
            attachments=[discord.File(io.BytesIO(upload.data), upload.filename)],
            view=self.bot.plugins.result_view(job))


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Show(bot))
