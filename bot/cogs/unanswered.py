"""Answer the clicks and forms nothing else answers, instead of Discord's "interaction failed".

That happens to a button whose plugin was removed or renamed, and to a form (modal) opened
before a restart: discord.py keeps open modals in memory only, so after a restart it drops
their submissions. Handlers answer within milliseconds, so one still unanswered shortly before
Discord's 3-second deadline never will be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import ImagineBot

log = logging.getLogger(__name__)

#: Seconds to wait for another handler; Discord gives up on an interaction after 3.
ANSWER_WAIT = 2.5
FORM_GONE = ("This form was opened before the bot restarted, so its answers were lost. "
             "Please open it again.")
BUTTON_GONE = ("This button no longer does anything: the feature behind it was removed or "
               "changed. Make a new image to get working buttons.")


class Unanswered(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        if interaction.type == discord.InteractionType.modal_submit:
            text = FORM_GONE
        elif interaction.type == discord.InteractionType.component:
            text = BUTTON_GONE
        else:
            return  # slash commands: the command tree answers unknown ones itself
        await asyncio.sleep(ANSWER_WAIT)
        if interaction.response.is_done():
            return
        custom_id = dict(interaction.data or {}).get("custom_id")
        log.info("nothing answered %s %r of user %s", interaction.type.name, custom_id,
                 interaction.user.id)
        with contextlib.suppress(discord.HTTPException):
            await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Unanswered(bot))
