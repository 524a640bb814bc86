"""Who may do what, where and how often: the bot-side checks every command relies on.

Discord's ``default_member_permissions`` only hides commands and any guild admin can change it,
so admin rights are checked here against ``settings.admin_user_ids`` and the application's
owner (or team). Every refusal is a :class:`CheckFailure` whose text is meant for the user.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.textfold import fold

if TYPE_CHECKING:
    from bot.app import ImagineBot
    from bot.settings import Settings
    from engine.request import GenerationRequest

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Channel types in which commands run: a guild's text channels and the threads inside them.
TEXT_CHANNEL_TYPES = frozenset({
    discord.ChannelType.text,
    discord.ChannelType.news,
    discord.ChannelType.public_thread,
    discord.ChannelType.private_thread,
    discord.ChannelType.news_thread,
})


class CheckFailure(app_commands.CheckFailure):
    """A refusal; ``str(error)`` is one sentence for the user, naming no internals."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotAdmin(CheckFailure):
    def __init__(self) -> None:
        super().__init__("Only the bot's administrators can use this command.")


async def refuse(interaction: discord.Interaction[Any], message: str) -> None:
    """Tell only the user, whether or not the interaction was answered already."""
    if interaction.response.is_done():
        await interaction.followup.send(message, ephemeral=True)
    else:
        await interaction.response.send_message(message, ephemeral=True)


def command_name(interaction: discord.Interaction[Any]) -> str:
    command = interaction.command
    return command.qualified_name if command is not None else "?"


# -- admins ---------------------------------------------------------------------------------------

async def is_admin(bot: commands.Bot, user: discord.abc.User, settings: Settings) -> bool:
    """Configured admins, plus the application's owner or its team's admins and developers."""
    if user.id in settings.admin_user_ids:
        return True
    return await bot.is_owner(user)


async def ensure_admin(interaction: discord.Interaction[Any], settings: Settings) -> None:
    if await is_admin(interaction.client, interaction.user, settings):
        return
    log.warning("refused admin command %r for user %s in channel %s", command_name(interaction),
                interaction.user.id, interaction.channel_id)
    raise NotAdmin()


def admin_only() -> Callable[[T], T]:
    """``app_commands`` check for admin commands; the bot must carry ``settings``."""

    async def predicate(interaction: discord.Interaction[Any]) -> bool:
        await ensure_admin(interaction, interaction.client.settings)
        return True

    return app_commands.check(predicate)


# -- where ----------------------------------------------------------------------------------------

def ensure_channel(interaction: discord.Interaction[Any], settings: Settings) -> None:
    if interaction.guild_id is None:
        raise CheckFailure("Commands work only in a server's text channels, not in direct "
                           "messages.")
    channel = interaction.channel
    if channel is not None and channel.type not in TEXT_CHANNEL_TYPES:
        raise CheckFailure("Commands work only in a server's text channels.")
    if settings.allowed_channel_ids:
        parent_id = getattr(channel, "parent_id", None)
        if not {interaction.channel_id, parent_id} & settings.allowed_channel_ids:
            mentions = ", ".join(f"<#{cid}>" for cid in sorted(settings.allowed_channel_ids))
            raise CheckFailure(f"Commands work only in {mentions}.")


def channel_check() -> Callable[[T], T]:
    """``app_commands`` check: guild text channels only, and the allowed ones if configured."""

    async def predicate(interaction: discord.Interaction[Any]) -> bool:
        ensure_channel(interaction, interaction.client.settings)
        return True

    return app_commands.check(predicate)


# -- what -----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _blocklist_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    folded = sorted({fold(word) for word in words} - {""}, key=len, reverse=True)
    if not folded:
        return None
    # Whole words: no letter or digit on either side (an underscore separates, so "_word_" matches).
    alternatives = "|".join(re.escape(word) for word in folded)
    return re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])")


def blocked_word(text: str, blocklist: Iterable[str]) -> str | None:
    """The first blocklisted word in ``text``, as :func:`bot.textfold.fold` reads it (either
    way it can be read), or None.

    What comes back is the member's own text folded (one line, lowercase, look-alikes as the
    Latin letters they look like), so quoting it tells them nothing about the list but where
    their text matched it.
    """
    pattern = _blocklist_pattern(tuple(blocklist))
    if pattern is None:
        return None
    for capitals in (False, True):
        match = pattern.search(fold(text, capitals=capitals))
        if match:
            return match.group(0)
    return None


def check_text(text: str, settings: Settings, label: str) -> str:
    """The one check for every text a member sends (prompt, negative prompt, remix…): ``text``
    with outer whitespace removed, or a CheckFailure that names the text by ``label``.

    Empty text passes; a text that must not be empty is checked for that first
    (:func:`validate_prompt`).
    """
    text = text.strip()
    if len(text) > settings.max_prompt_length:
        raise CheckFailure(f"Your {label} is {len(text)} characters long; the limit is "
                           f"{settings.max_prompt_length}.")
    word = blocked_word(text, settings.blocklist)
    if word is not None:
        raise CheckFailure(f"Your {label} contains a word that isn't allowed here: “{word}”.")
    return text


def validate_prompt(prompt: str, settings: Settings) -> str:
    """The prompt with outer whitespace removed, or a CheckFailure saying what to change."""
    if not prompt.strip():
        raise CheckFailure("Write a prompt describing the image.")
    return check_text(prompt, settings, "prompt")


# -- how often ------------------------------------------------------------------------------------

class Cooldowns:
    """When each user last started something; one instance per bot."""

    def __init__(self) -> None:
        self._last: dict[int, datetime] = {}

    def remaining(self, user_id: int, now: datetime, seconds: float) -> float:
        last = self._last.get(user_id)
        if last is None:
            return 0.0
        return max(0.0, seconds - (now - last).total_seconds())

    def ensure(self, user_id: int, now: datetime, seconds: float) -> None:
        """Refuse while cooling down; otherwise record this use."""
        left = self.remaining(user_id, now, seconds)
        if left > 0:
            wait = math.ceil(left)
            raise CheckFailure(f"Please wait {wait} second{'s' if wait != 1 else ''} before "
                               "generating again.")
        self._last[user_id] = now


_cooldowns: weakref.WeakKeyDictionary[commands.Bot, Cooldowns] = weakref.WeakKeyDictionary()


def cooldowns(bot: commands.Bot) -> Cooldowns:
    if bot not in _cooldowns:
        _cooldowns[bot] = Cooldowns()
    return _cooldowns[bot]


async def ensure_can_generate(bot: ImagineBot, interaction: discord.Interaction[Any],
                              request: GenerationRequest) -> GenerationRequest:
    """Every check a generating command needs, cheapest first; returns the request with its
    texts cleaned.

    Every text of the request goes through :func:`check_text`: the negative prompt is shown in
    the public result and written to the PNG just like the prompt. The cooldown starts only when
    the other checks passed, so a refused prompt can be fixed and sent again at once.
    """
    settings = bot.settings
    ensure_channel(interaction, settings)
    texts = {"prompt": validate_prompt(request.prompt, settings),
             "negative_prompt": check_text(request.negative_prompt, settings, "negative prompt")}
    cooldowns(bot).ensure(interaction.user.id, bot.clock(), settings.cooldown_seconds)
    return request.model_copy(update=texts)
