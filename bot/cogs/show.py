"""/show: post a finished job again, with buttons that work like the original's.

It follows /imagine's rules: the allowed channels and the cooldown. A result stays where it was
made: one from another server, or from a channel or private thread that the asker cannot see
here, is shown only to its owner and to the bot's administrators, and then only to them
(ephemeral). Anyone else is told that there is no such job, so a job id reveals nothing.
"""

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
from bot.jobs.models import Job, JobState
from bot.uploads import TooLarge, fit_upload

if TYPE_CHECKING:
    from bot.app import ImagineBot

NO_SUCH_JOB = "There is no finished job with this id."


class Show(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="show", description="Post a finished job again, with its "
                          "buttons.")
    @app_commands.describe(job_id="The job's id (in the footer of its result).")
    @app_commands.guild_only()
    @checks.channel_check()
    async def show(self, interaction: discord.Interaction[ImagineBot],
                   job_id: app_commands.Range[str, 1, 40]) -> None:
        bot, user = self.bot, interaction.user
        job = await bot.jobs.get(job_id.strip())
        if job is None or job.state != JobState.DELIVERED or job.result is None:
            await checks.refuse(interaction, NO_SUCH_JOB)
            return
        public = shown_publicly(interaction, job)
        if not public and job.owner_id != user.id and not await checks.is_admin(
                bot, user, bot.settings):
            await checks.refuse(interaction, NO_SUCH_JOB)  # the same words: nothing revealed
            return
        try:
            checks.cooldowns(bot).ensure(user.id, bot.clock(), bot.settings.cooldown_seconds)
        except checks.CheckFailure as refusal:
            await checks.refuse(interaction, refusal.message)
            return
        await interaction.response.defer(thinking=True, ephemeral=not public)
        grid = Path(job.result.get("grid") or job.result["images"][0]["path"])
        try:
            upload = await asyncio.to_thread(fit_upload, grid, upload_limit(interaction))
        except (FileNotFoundError, TooLarge):
            await refuse_deferred(interaction, "The images of this job are no longer available.")
            return
        await interaction.edit_original_response(
            embed=result_embed(job, upload.filename, upload.note),
            attachments=[discord.File(io.BytesIO(upload.data), upload.filename)],
            view=bot.plugins.result_view(job))


def shown_publicly(interaction: discord.Interaction[ImagineBot], job: Job) -> bool:
    """Whether everyone here may see this job's result: it was made in this server, in this
    channel or in one that the asker can see and that is not a private thread.

    A channel the bot does not know (deleted, or an archived thread) counts as private.
    """
    if job.guild_id != interaction.guild_id:
        return False
    if job.channel_id == interaction.channel_id:
        return True
    guild, member = interaction.guild, interaction.user
    origin = guild.get_channel_or_thread(job.channel_id) if guild is not None else None
    if origin is None or (isinstance(origin, discord.Thread) and origin.is_private()):
        return False
    return isinstance(member, discord.Member) and origin.permissions_for(member).view_channel


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Show(bot))
