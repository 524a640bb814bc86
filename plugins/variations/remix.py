"""🎨 Remix: a modal to edit the prompt before a variation or a reroll.

The modal lives only in memory while the user fills it in (a form left open across a restart
is answered by ``bot.cogs.unanswered``); the button that opens it is a plugin DynamicItem like
the others, so it works on messages from before a restart.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import discord

from bot.plugin_api import Bot, CheckFailure, JobView, refuse, report_unexpected
from plugins.variations.actions import GRID_KIND, Strength, reroll, vary

log = logging.getLogger(__name__)

#: Discord's limit for a text input's value.
MAX_INPUT = 4000
#: Seconds an open modal is kept; Discord sends nothing when the user closes one.
MODAL_TIMEOUT = 1800


class RemixModal(discord.ui.Modal):
    """Prompt (prefilled), which image to vary (grids only; empty = reroll), and strength."""

    def __init__(self, bot: Bot, job: JobView, opened_by: int) -> None:
        # One id per opening: discord.py keys open modals by custom_id alone, so two users
        # remixing the same image at once would otherwise share (and end) one form.
        super().__init__(title="Remix", timeout=MODAL_TIMEOUT,
                         custom_id=f"variations:remix-modal:{job.id}:{opened_by}")
        self.bot = bot
        self.job = job
        limit = min(MAX_INPUT, bot.settings.max_prompt_length)
        self.prompt: discord.ui.TextInput[RemixModal] = discord.ui.TextInput(
            label="Prompt", custom_id="prompt", style=discord.TextStyle.paragraph,
            default=job.request.prompt[:limit], max_length=limit)
        self.add_item(self.prompt)
        self.grid = job.kind == GRID_KIND
        self.image: discord.ui.TextInput[RemixModal] | None = None
        if self.grid:
            self.image = discord.ui.TextInput(
                label=f"Image to vary (1–{job.image_count})", custom_id="image",
                required=False, max_length=2, placeholder="Leave empty for new seeds (🔄)")
            self.add_item(self.image)
        self.strength: discord.ui.TextInput[RemixModal] = discord.ui.TextInput(
            label="Variation", custom_id="strength", required=False, max_length=6,
            default="subtle" if self.grid else "strong", placeholder="subtle or strong")
        self.add_item(self.strength)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        prompt = self.prompt.value.strip()
        strength = parse_strength(self.strength.value)
        index = parse_image(self.image.value, self.job.image_count) if self.image else 0
        if index is None:
            await reroll(self.bot, interaction, self.job, 0, prompt=prompt)
        else:
            await vary(self.bot, interaction, self.job, index, strength=strength, prompt=prompt)

    async def on_error(  # type: ignore[override]  # discord.py's Modal narrows BaseView's
            self, interaction: discord.Interaction[Any], error: Exception, /) -> None:
        if isinstance(error, CheckFailure):
            text = error.message
        else:
            text = report_unexpected(log, error, "remix of job %s failed for user %s",
                                     self.job.id, interaction.user.id,
                                     summary="Sorry, the remix failed.")
        with contextlib.suppress(discord.HTTPException):
            await refuse(interaction, text)


async def remix(bot: Bot, interaction: discord.Interaction[Any], job: JobView,
                index: int) -> None:
    """The 🎨 button: open the form; its submission varies or rerolls."""
    await interaction.response.send_modal(RemixModal(bot, job, interaction.id))


def parse_strength(text: str) -> Strength:
    word = text.strip().lower() or "subtle"
    if word == "strong":
        return "strong"
    if word == "subtle":
        return "subtle"
    raise CheckFailure("Variation must be “subtle” or “strong”.")


def parse_image(text: str, count: int) -> int | None:
    """The 0-based image index, or None for a reroll."""
    text = text.strip()
    if not text:
        return None
    if not text.isdecimal() or not 1 <= int(text) <= count:
        raise CheckFailure(f"Image to vary must be a number from 1 to {count}, or empty.")
    return int(text) - 1
