"""/loras: the LoRAs and embeddings a prompt can use here, and how to write them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import checks
from engine.prompting.library import names

if TYPE_CHECKING:
    from bot.app import ImagineBot

#: Room for the list in an embed field (Discord allows 1024 characters per field).
FIELD_LIMIT = 1000


def name_list(found: list[str]) -> str:
    """Names as inline code, comma-separated, cut to fit a field with a count of the rest."""
    shown: list[str] = []
    size = 0
    for index, name in enumerate(found):
        item = f"`{name}`"
        rest = len(found) - index
        if size + len(item) + 2 > FIELD_LIMIT - len(f" … and {rest} more"):
            return ", ".join(shown) + f" … and {rest} more"
        shown.append(item)
        size += len(item) + 2
    return ", ".join(shown) or "None."


class Loras(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="loras", description="The LoRAs and embeddings you can use in "
                                                    "a prompt")
    @checks.channel_check()
    async def loras(self, interaction: discord.Interaction[ImagineBot]) -> None:
        settings = self.bot.settings
        loras, embeddings = await asyncio.gather(asyncio.to_thread(names, settings.lora_dir),
                                                 asyncio.to_thread(names, settings.embeddings_dir))
        embed = discord.Embed(
            title="LoRAs and embeddings", colour=discord.Colour.blurple(),
            description="Add `<lora:NAME:WEIGHT>` to a prompt (the weight defaults to 1); "
                        "write an embedding's name in the prompt to use it.")
        embed.add_field(name="LoRAs", value=name_list(loras), inline=False)
        embed.add_field(name="Embeddings", value=name_list(embeddings), inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Loras(bot))
