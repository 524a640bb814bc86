"""/imagine: the command users come for. Everything after the options is bot.generation's job.

The options come first, then the prompt's own flags (``--ar 16:9 --no text``, engine.flags)
for what the options left unset, then the style (engine.styles) and the image prompt
(bot.image_prompt); each refusal comes before anything is held.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.generation import refusal_text, refuse_deferred, start_generation
from bot.image_prompt import with_image_prompt
from engine.families import ASPECTS, allowed_model_info, aspect_size, model_names, pick_model
from engine.flags import parse_flags
from engine.request import MAX_CFG, SAMPLERS, SEED_LIMIT, GenerationRequest, RequestError
from engine.styles import apply_style, style_names

if TYPE_CHECKING:
    from bot.app import ImagineBot

#: Discord's own caps on option values; the configured limits are checked on use.
PROMPT_MAX = 6000
STEPS_MAX = 500


class Imagine(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="Make four images from a text prompt.")
    @app_commands.describe(
        prompt="What to draw.",
        negative="What to keep out of the image.",
        aspect="Shape of the image (width:height); sized for the model.",
        steps="Denoising steps: more is slower and often finer.",
        cfg="How closely to follow the prompt (guidance scale).",
        seed="Start from this seed to repeat a result (empty: random).",
        sampler="The sampling method.",
        model="Which model to use.",
        style="A style added to the prompt (the server's styles).",
        image="An image to start from (PNG, JPEG or WebP).",
        strength="How much of the image to redraw, above 0 up to 1 (all); default 0.6.",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS],
        sampler=[app_commands.Choice(name=s, value=s) for s in SAMPLERS],
    )
    async def imagine(
        self, interaction: discord.Interaction[ImagineBot],
        prompt: app_commands.Range[str, 1, PROMPT_MAX],
        negative: app_commands.Range[str, 1, PROMPT_MAX] | None = None,
        aspect: str | None = None,
        steps: app_commands.Range[int, 1, STEPS_MAX] | None = None,
        cfg: app_commands.Range[float, 0.0, MAX_CFG] | None = None,
        seed: app_commands.Range[int, 0, SEED_LIMIT - 1] | None = None,
        sampler: str | None = None,
        model: app_commands.Range[str, 1, 100] | None = None,
        style: app_commands.Range[str, 1, 100] | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
    ) -> None:
        # The 3-second deadline comes first: even reading model files waits until after it.
        await interaction.response.defer(thinking=True)
        settings = self.bot.settings
        try:
            flags = parse_flags(prompt)
            # By name, before anything touches the filesystem: a path is just an unknown name.
            ref = settings.model if model is None else pick_model(model, settings)
            width = height = None
            aspect = aspect or flags.aspect
            if aspect is not None:
                info = await asyncio.to_thread(allowed_model_info, ref, settings)
                width, height = aspect_size(info, aspect)
            request = flags.apply(GenerationRequest(
                prompt=prompt, negative_prompt=negative or "",
                model="" if model is None else ref, width=width, height=height, steps=steps,
                cfg=cfg, seed=seed, sampler=sampler))
            if style := style or flags.style:
                request = await asyncio.to_thread(apply_style, request, style,
                                                  settings.styles_file)
            if image is not None:
                request = await with_image_prompt(self.bot, request, image, strength)
            elif strength is not None:
                raise RequestError("strength", "strength applies to an image: add one with "
                                   "the image option")
        except RequestError as error:
            await refuse_deferred(interaction, refusal_text(self.bot, error))
            return
        await start_generation(self.bot, interaction, request, action="gen", kind="imagine")

    @imagine.autocomplete("model")
    async def model_choices(self, interaction: discord.Interaction[ImagineBot],
                            current: str) -> list[app_commands.Choice[str]]:
        """Display names only: members pick a model by name and never see its path."""
        needle = current.casefold()
        return [app_commands.Choice(name=name, value=name)
                for name in model_names(self.bot.settings) if needle in name.casefold()][:25]

    @imagine.autocomplete("style")
    async def style_choices(self, interaction: discord.Interaction[ImagineBot],
                            current: str) -> list[app_commands.Choice[str]]:
        needle = current.casefold()
        names = await asyncio.to_thread(style_names, self.bot.settings.styles_file)
        return [app_commands.Choice(name=name[:100], value=name[:100])
                for name in names if needle in name.casefold()][:25]


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(Imagine(bot))
