"""/credits-admin grant|revoke|balance|history: credit administration inside Discord.

Every change goes to the ledger with the acting admin, the reason and a key made of the
interaction id, so a retried interaction changes nothing twice and the statement says who did it.
Amounts over the ledger's limits reach the bot (Discord's own bound is 2^53) and are refused in
one ephemeral sentence, with nothing written.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import checks
from bot.cogs.credits import history_text
from bot.ledger import AmountTooLarge, OverLimit

if TYPE_CHECKING:
    from bot.app import ImagineBot

log = logging.getLogger(__name__)

HISTORY = 20
Amount = app_commands.Range[int, 1]
Reason = app_commands.Range[str, 1, 200]


class CreditsAdmin(commands.Cog):
    group = app_commands.Group(
        name="credits-admin", description="Grant, revoke and inspect users' credits (admins)",
        default_permissions=discord.Permissions(administrator=True), guild_only=True)

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @group.command(name="grant", description="Give a user credits")
    @app_commands.describe(user="who receives them", amount="how many credits",
                           reason="why (kept in the user's statement)")
    @checks.admin_only()
    @checks.channel_check()
    async def grant(self, interaction: discord.Interaction[ImagineBot], user: discord.User,
                    amount: Amount, reason: Reason) -> None:
        actor = interaction.user.id
        try:
            balance = await self.bot.ledger.grant(user.id, amount, actor, reason,
                                                  key=f"admin:grant:{interaction.id}")
        except OverLimit as refusal:
            await refuse_amount(interaction, refusal, user)
            return
        log.info("admin %s granted %d credits to %s: %s", actor, amount, user.id, reason)
        await interaction.response.send_message(
            f"Granted **{amount}** credits to {user.mention}. Their balance is now "
            f"**{balance}**.", ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    @group.command(name="revoke", description="Take credits back from a user")
    @app_commands.describe(user="whose credits", amount="how many credits at most",
                           reason="why (kept in the user's statement)")
    @checks.admin_only()
    @checks.channel_check()
    async def revoke(self, interaction: discord.Interaction[ImagineBot], user: discord.User,
                     amount: Amount, reason: Reason) -> None:
        actor = interaction.user.id
        try:
            taken = await self.bot.ledger.revoke(user.id, amount, actor, reason,
                                                 key=f"admin:revoke:{interaction.id}")
        except OverLimit as refusal:
            await refuse_amount(interaction, refusal, user)
            return
        balance = await self.bot.ledger.balance(user.id)
        log.info("admin %s revoked %d of %d credits from %s: %s", actor, taken, amount, user.id,
                 reason)
        if taken == 0:
            text = f"Nothing revoked: {user.mention} has no available credits."
        elif taken < amount:
            text = (f"Revoked **{taken}** credits from {user.mention}, not {amount}: that is all "
                    f"they had available. Their balance is now **{balance}**.")
        else:
            text = (f"Revoked **{taken}** credits from {user.mention}. Their balance is now "
                    f"**{balance}**.")
        await interaction.response.send_message(
            text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    @group.command(name="balance", description="Show a user's credits")
    @app_commands.describe(user="whose credits")
    @checks.admin_only()
    @checks.channel_check()
    async def balance(self, interaction: discord.Interaction[ImagineBot],
                      user: discord.User) -> None:
        available = await self.bot.ledger.balance(user.id)
        held = await self.bot.ledger.pending_holds(user.id)
        await interaction.response.send_message(
            f"{user.mention} has **{available}** credits available and {held} held for jobs in "
            "progress.", ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    @group.command(name="history", description="Show a user's recent credit statement")
    @app_commands.describe(user="whose statement")
    @checks.admin_only()
    @checks.channel_check()
    async def history(self, interaction: discord.Interaction[ImagineBot],
                      user: discord.User) -> None:
        entries = await self.bot.ledger.history(user.id, HISTORY)
        embed = discord.Embed(title=f"Credit statement of {user.display_name}",
                              description=history_text(entries), colour=discord.Colour.blurple())
        embed.set_footer(text=f"last {HISTORY} entries, newest first")
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def refuse_amount(interaction: discord.Interaction[ImagineBot], refusal: OverLimit,
                        user: discord.User) -> None:
    """One ephemeral sentence for an amount the ledger refused; it wrote nothing."""
    if isinstance(refusal, AmountTooLarge):
        text = f"Nothing changed: one grant or revoke moves at most {refusal.limit:,} credits."
    else:
        text = (f"Nothing changed: that would take {user.mention}'s balance over the limit of "
                f"{refusal.limit:,} credits.")
    await interaction.response.send_message(
        text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(CreditsAdmin(bot))
