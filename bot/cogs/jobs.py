"""/jobs: administrators look into the queue and cancel any job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import checks
from bot.jobs.models import Job, JobState

if TYPE_CHECKING:
    from bot.app import ImagineBot

JOB_ID = app_commands.Range[str, 1, 40]


def describe(job: Job) -> str:
    """One line per job: id, state, owner, kind, prompt."""
    prompt = str(job.params.get("prompt", ""))
    short = prompt if len(prompt) <= 60 else prompt[:59] + "…"
    created = discord.utils.format_dt(job.created_at, "R")
    return f"`{job.id}` **{job.state}** {job.kind} by <@{job.owner_id}> {created}: {short}"


@app_commands.guild_only()
class Jobs(commands.GroupCog, group_name="jobs",
           group_description="Look into the generation queue (administrators)."):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        super().__init__()

    # Any, not ImagineBot: discord.py declares this hook generic over the client type.
    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        """Every /jobs subcommand is for administrators only (refusals are logged)."""
        await checks.ensure_admin(interaction, self.bot.settings)
        return True

    @app_commands.command(name="list", description="Recent jobs, newest first.")
    @app_commands.describe(state="Only jobs in this state.", user="Only this user's jobs.",
                           limit="How many to show.")
    @app_commands.choices(state=[app_commands.Choice(name=s.value, value=s.value)
                                 for s in JobState])
    async def list_(self, interaction: discord.Interaction[ImagineBot], state: str | None = None,
                    user: discord.User | None = None,
                    limit: app_commands.Range[int, 1, 25] = 10) -> None:
        jobs = await self.bot.jobs.list_jobs(state=state, user_id=user.id if user else None,
                                             limit=limit)
        text = "\n".join(describe(job) for job in jobs) or "No jobs match."
        await interaction.response.send_message(text[:2000], ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="info", description="Everything about one job.")
    @app_commands.describe(job_id="The job's id (in the footer of its result).")
    async def info(self, interaction: discord.Interaction[ImagineBot], job_id: JOB_ID) -> None:
        job = await self.bot.jobs.get(job_id.strip())
        if job is None:
            await checks.refuse(interaction, f"There is no job `{job_id}`.")
            return
        position = self.bot.jobs.position(job.id)
        lines = [describe(job), f"cost {job.cost} credits · hold {job.hold_id} · attempts "
                 f"{job.attempts}" + (f" · queue position {position}" if position else "")]
        params = job.request
        lines.append(f"{params.width}x{params.height}, {params.steps} steps, cfg {params.cfg}, "
                     f"{params.sampler}, seed {params.seed}, {params.count} images, "
                     f"{params.operation}")
        if job.end_reason:
            lines.append(f"ended: {job.end_reason}" + (f" ({job.error})" if job.error else ""))
        if job.delivered_free:
            lines.append("delivered free: its hold could no longer be captured")
        if job.message_id:
            lines.append(f"message: https://discord.com/channels/{job.guild_id or '@me'}/"
                         f"{job.channel_id}/{job.message_id}")
        await interaction.response.send_message("\n".join(lines)[:2000], ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="cancel", description="Cancel any queued or running job.")
    @app_commands.describe(job_id="The job's id.")
    async def cancel(self, interaction: discord.Interaction[ImagineBot], job_id: JOB_ID) -> None:
        cancelled = await self.bot.jobs.cancel(job_id.strip(), interaction.user.id, admin=True)
        text = (f"Job `{job_id}` is being cancelled; its owner was not charged." if cancelled
                else f"Job `{job_id}` is not queued or running.")
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Jobs(bot))
