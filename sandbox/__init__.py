"""A local, strict Discord emulator (REST + gateway) that the real discord.py client talks to."""

from sandbox.clock import EmulatorClock
from sandbox.emulator import DiscordEmulator, GuildConfig
from sandbox.errors import ApiError, EmulatorError
from sandbox.models import (
           InteractionRecord,
           MessageRevision,
           StoredAttachment,
           StoredMessage,
           User,
)

__all__ = ["ApiError", "DiscordEmulator", "EmulatorClock", "EmulatorError", "GuildConfig",
           "InteractionRecord", "MessageRevision", "StoredAttachment", "StoredMessage", "User"]
