"""Answer a form (modal) that nothing answers, instead of Discord's "interaction failed".

discord.py keeps open modals in memory only, so it drops the submission of a form that was
opened before a restart. Live forms answer within milliseconds (they defer before any other
work), so one still unanswered shortly before Discord's 3-second deadline never will be.
Buttons need no such help: every plugin-shaped custom_id has a DynamicItem, and the plugin
registry's fallback answers those of plugins that are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import ImagineBot

log = logging.getLogger(__name__)

#: Seconds to wait for the form's own handler; Discord gives up on an interaction after 3.
ANSWER_WAIT = 2.5
FORM_GONE = ("This form was opened before the bot restarted, so its answers were lost. "
             "Please open it again.")


class Unanswered(commands.Cog):
    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[ImagineBot]) -> None:
        if interaction.type != discord.InteractionType.modal_submit:
            return
        await asyncio.sleep(ANSWER_WAIT)
        if interaction.response.is_done():
            return
        log.info("nothing answered form %r of user %s",
                 dict(interaction.data or {}).get("custom_id"), interaction.user.id)
        with contextlib.suppress(discord.HTTPException):
            await interaction.response.send_message(FORM_GONE, ephemeral=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Unanswered())
