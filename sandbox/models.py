"""What the emulator remembers: users, the guild, messages with their edit history, interactions."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.clock import DISCORD_EPOCH_MS, iso

EPHEMERAL = 64
LOADING = 128
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
Files = dict[int, tuple[str, bytes, str | None]]  # upload index -> (filename, bytes, type)
EVERYONE_PERMISSIONS = 0x0000_0006_3FEF_7E41  # Discord's default @everyone set incl. slash commands
ALL_PERMISSIONS = (1 << 50) - 1


def snowflake_time(snowflake: int) -> datetime:
    return datetime.fromtimestamp(((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000, UTC)


@dataclass
class User:
    id: int
    name: str
    bot: bool = False
    permissions: int = EVERYONE_PERMISSIONS

    @property
    def created_at(self) -> datetime:
        return snowflake_time(self.id)

    def payload(self) -> dict[str, Any]:
        return {"id": str(self.id), "username": self.name, "global_name": self.name,
                "discriminator": "0", "avatar": None, "bot": self.bot, "public_flags": 0,
                "flags": 0, "banner": None, "accent_color": None, "avatar_decoration_data": None}

    def member_payload(self, joined_at: datetime, with_permissions: bool = False) -> dict[str, Any]:
        member: dict[str, Any] = {
            "user": self.payload(), "nick": None, "avatar": None, "roles": [],
            "joined_at": iso(joined_at), "premium_since": None, "deaf": False, "mute": False,
            "flags": 0, "pending": False, "communication_disabled_until": None}
        if with_permissions:
            member["permissions"] = str(self.permissions)
        return member


@dataclass
class Guild:
    id: int
    name: str
    channel_id: int
    channel_name: str
    created_at: datetime
    upload_limit: int = DEFAULT_UPLOAD_LIMIT
    members: dict[int, User] = field(default_factory=dict)

    def channel_payload(self) -> dict[str, Any]:
        return {"id": str(self.channel_id), "type": 0, "guild_id": str(self.id),
                "name": self.channel_name, "position": 0, "permission_overwrites": [],
                "nsfw": False, "parent_id": None, "topic": None, "rate_limit_per_user": 0,
                "last_message_id": None, "flags": 0}

    def role_payload(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": "@everyone", "color": 0, "colors": {
            "primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False, "position": 0, "permissions": str(EVERYONE_PERMISSIONS),
            "managed": False, "mentionable": False, "flags": 0, "icon": None,
            "unicode_emoji": None}

    def payload(self, owner_id: int) -> dict[str, Any]:
        return {
            "id": str(self.id), "name": self.name, "icon": None, "splash": None,
            "discovery_splash": None, "owner_id": str(owner_id), "afk_channel_id": None,
            "afk_timeout": 300, "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "roles": [self.role_payload()], "emojis": [],
            "stickers": [], "features": [], "mfa_level": 0, "system_channel_id": None,
            "system_channel_flags": 0, "rules_channel_id": None, "vanity_url_code": None,
            "description": None, "banner": None, "premium_tier": 0,
            "premium_subscription_count": 0, "preferred_locale": "en-US",
            "public_updates_channel_id": None, "nsfw_level": 0, "premium_progress_bar_enabled":
            False, "large": False, "unavailable": False, "joined_at": iso(self.created_at),
            "member_count": len(self.members),
            "members": [u.member_payload(self.created_at) for u in self.members.values()],
            "channels": [self.channel_payload()], "threads": [], "presences": [],
            "voice_states": [], "stage_instances": [], "guild_scheduled_events": [],
            "soundboard_sounds": [], "max_members": 500000, "max_video_channel_users": 25,
        }


@dataclass
class StoredAttachment:
    id: int
    filename: str
    data: bytes
    url: str
    content_type: str | None = None
    description: str | None = None

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": str(self.id), "filename": self.filename,
                                "size": len(self.data), "url": self.url, "proxy_url": self.url}
        if self.content_type:
            body["content_type"] = self.content_type
        if self.description:
            body["description"] = self.description
        return body


@dataclass
class MessageRevision:
    """One state of a message; ``StoredMessage.history`` holds them oldest first."""

    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachments: list[StoredAttachment]
    flags: int
    at: datetime


@dataclass
class StoredMessage:
    id: int
    channel_id: int
    guild_id: int
    author: User
    created_at: datetime
    history: list[MessageRevision]
    interaction_id: int | None = None
    webhook_id: int | None = None
    #: What the creator sent as ``nonce`` (echoed back as Discord does); see MessageStore.post.
    nonce: str | int | None = None
    deleted: bool = False

    @property
    def current(self) -> MessageRevision:
        return self.history[-1]

    @property
    def content(self) -> str:
        return self.current.content

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return self.current.embeds

    @property
    def components(self) -> list[dict[str, Any]]:
        return self.current.components

    @property
    def attachments(self) -> list[StoredAttachment]:
        return self.current.attachments

    @property
    def flags(self) -> int:
        return self.current.flags

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def edited(self) -> bool:
        return len(self.history) > 1

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in walk_components(self.components) if "custom_id" in c]

    def component(self, custom_id: str) -> dict[str, Any] | None:
        return next((c for c in walk_components(self.components)
                     if c.get("custom_id") == custom_id), None)

    def payload(self, application_id: int) -> dict[str, Any]:
        rev = self.current
        body: dict[str, Any] = {
            "id": str(self.id), "channel_id": str(self.channel_id), "guild_id": str(self.guild_id),
            "author": self.author.payload(), "content": rev.content,
            "timestamp": iso(self.created_at),
            "edited_timestamp": iso(rev.at) if self.edited else None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [],
            "attachments": [a.payload() for a in rev.attachments],
            "embeds": copy.deepcopy(rev.embeds), "components": copy.deepcopy(rev.components),
            "pinned": False, "type": 0 if self.interaction_id is None else 20,
            "flags": rev.flags, "application_id": str(application_id)}
        if self.webhook_id is not None:
            body["webhook_id"] = str(self.webhook_id)
        if self.nonce is not None:
            body["nonce"] = self.nonce
        return body


def walk_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every component at any depth (rows, sections, containers, labels)."""
    found: list[dict[str, Any]] = []
    for component in components:
        found.append(component)
        found.extend(walk_components(component.get("components", [])))
        for key in ("accessory", "component"):
            if isinstance(component.get(key), dict):
                found.extend(walk_components([component[key]]))
    return found


@dataclass
class InteractionRecord:
    """One interaction and how the bot answered it.

    ``dispatched_at``/``responded_at`` are emulator-clock seconds; ``response_latency`` is the
    time from INTERACTION_CREATE to the initial callback (what the benchmark reports).
    """

    id: int
    token: str
    type: int
    user: User
    channel_id: int
    data: dict[str, Any]
    dispatched_at: float
    message_id: int | None = None
    response_type: int | None = None
    responded_at: float | None = None
    original_message_id: int | None = None
    autocomplete_choices: list[dict[str, Any]] | None = None
    modal: dict[str, Any] | None = None
    rejections: list[int] = field(default_factory=list)
    responded: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def response_latency(self) -> float | None:
        if self.responded_at is None:
            return None
        return self.responded_at - self.dispatched_at

    async def wait_for_response(self, timeout: float = 5.0) -> int:  # noqa: ASYNC109
        """The initial callback's type once the bot has sent it."""
        await asyncio.wait_for(self.responded.wait(), timeout)
        assert self.response_type is not None
        return self.response_type
