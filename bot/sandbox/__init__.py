"""A local, strict Discord emulator (REST + gateway) that the real discord.py client talks to."""

from bot.sandbox.clock import EmulatorClock
from bot.sandbox.emulator import DiscordEmulator, GuildConfig
from bot.sandbox.errors import ApiError, EmulatorError
from bot.sandbox.models import (
           InteractionRecord,
           MessageRevision,
           StoredAttachment,
           StoredMessage,
           User,
)

__all__ = ["ApiError", "DiscordEmulator", "EmulatorClock", "EmulatorError", "GuildConfig",
           "InteractionRecord", "MessageRevision", "StoredAttachment", "StoredMessage", "User"]
