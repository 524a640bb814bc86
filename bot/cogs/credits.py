"""/credits: a user's own balance, pending holds, next daily grant and recent activity."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import checks
from bot.ledger import HistoryEntry

if TYPE_CHECKING:
    from bot.app import ImagineBot

RECENT = 10
#: Room for a statement in an embed description (Discord allows 4096 characters).
STATEMENT_LIMIT = 4000
REASON_LIMIT = 80


def timestamp(moment: datetime, style: str = "R") -> str:
    """A Discord timestamp, shown in each reader's own time zone."""
    return f"<t:{int(moment.timestamp())}:{style}>"


def describe_entry(entry: HistoryEntry) -> str:
    """One statement line; amounts are the change to the available balance."""
    by = f" by <@{entry.actor}>" if entry.actor else ""
    reason = entry.reason or ""
    if len(reason) > REASON_LIMIT:
        reason = reason[:REASON_LIMIT - 1] + "…"
    why = f": {reason}" if reason else ""
    text = {
        "signup": "signup bonus",
        "daily": "daily allowance",
        "grant": f"granted{by}{why}",
        "revoke": f"revoked{by}{why}",
        "hold": "reserved for a job",
        "release": f"returned{why or ' (job not charged)'}",
        "capture": "reserved credits spent",
    }.get(entry.kind, reason or entry.kind)
    amount = f"**{entry.amount:+d}** " if entry.amount else ""
    return f"{timestamp(entry.time, 'd')} {timestamp(entry.time, 't')} {amount}{text}"


def history_text(entries: Sequence[HistoryEntry]) -> str:
    """Newest first, as many lines as fit in an embed description."""
    lines: list[str] = []
    size = 0
    for entry in entries:
        line = describe_entry(entry)
        size += len(line) + 1
        if size > STATEMENT_LIMIT:
            break
        lines.append(line)
    return "\n".join(lines) or "Nothing yet."


class Credits(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="credits", description="Your credits: balance, holds, next "
                                                      "daily grant and recent activity")
    @checks.channel_check()
    async def credits(self, interaction: discord.Interaction[ImagineBot]) -> None:
        user = interaction.user
        ledger = self.bot.ledger
        available = await ledger.touch(user.id, account_created_at=user.created_at)
        held = await ledger.pending_holds(user.id)
        entries = await ledger.history(user.id, RECENT)
        daily = self.bot.settings.daily_credits
        embed = discord.Embed(title="Your credits", colour=discord.Colour.blurple(),
                              description=f"**Last {RECENT} entries**\n{history_text(entries)}")
        embed.add_field(name="Available", value=f"**{available}** credits")
        embed.add_field(name="Held for jobs in progress", value=f"{held} credits")
        embed.add_field(name="Next daily grant", value=(
            f"+{daily} {timestamp(ledger.next_daily_at())}" if daily else "none on this bot"))
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Credits(bot))
