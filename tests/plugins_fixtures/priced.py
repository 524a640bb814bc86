"""A plugin with priced and misbehaving buttons, installed in tests through an entry point."""

from __future__ import annotations

from bot.plugin_api import Plugin, ResultAction

STAMP_PRICE = 5
BOOM_PRICE = 3


async def stamp(bot, interaction, job, index) -> None:
    await interaction.response.send_message(
        f"Stamped image {index + 1} of job {job.id} for {interaction.user.mention}.",
        ephemeral=True)


async def explode(bot, interaction, job, index) -> None:
    raise RuntimeError("the priced fixture plugin exploded")


async def forget_to_answer(bot, interaction, job, index) -> None:
    return None


plugin = Plugin(name="stamp", actions=[
    ResultAction(key="s", label="Stamp {n}", per_image=True, price=STAMP_PRICE, row=2,
                 callback=stamp),
    ResultAction(key="boom", emoji="💥", price=BOOM_PRICE, row=2, order=1, callback=explode),
    ResultAction(key="mute", label="Mute", row=4, order=1, callback=forget_to_answer),
])
