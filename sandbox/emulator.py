"""DiscordEmulator: a local, strict Discord (REST + gateway) and the control API tests drive."""

from __future__ import annotations

import asyncio
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from aiohttp import web

from sandbox.clock import EmulatorClock, Snowflakes
from sandbox.errors import EmulatorError
from sandbox.gateway import Gateway, GatewaySession
from sandbox.models import (
    ALL_PERMISSIONS,
    DEFAULT_UPLOAD_LIMIT,
    EVERYONE_PERMISSIONS,
    Guild,
    InteractionRecord,
    StoredMessage,
    User,
)
from sandbox.options import build_options, modal_rows
from sandbox.rest import (
    AUTOCOMPLETE_INTERACTION,
    COMMAND,
    COMPONENT,
    FIRST_RESPONSE_SECONDS,
    MODAL_SUBMIT,
    RestApi,
)
from sandbox.store import MessagePredicate, MessageStore
from sandbox.traffic import FaultInjector, RateLimiter


@dataclass
class GuildConfig:
    id: int | None = None
    name: str = "Sandbox Guild"
    channel_name: str = "general"
    upload_limit: int = DEFAULT_UPLOAD_LIMIT


class DiscordEmulator:
    """One bot application, one guild with one text channel, served on a free local port.

    Rate limits are on by default (``rate_limit`` requests per ``rate_limit_per`` seconds per
    route bucket, generous enough for a normal bot); pass ``rate_limit=None`` to switch them off.
    """

    def __init__(self, token: str = "sandbox-token", guild: GuildConfig | None = None, *,
                 host: str = "127.0.0.1", rate_limit: int | None = 50,
                 rate_limit_per: float = 1.0, heartbeat_interval_ms: int = 41250) -> None:
        self.token = token
        self.host = host
        self.clock = EmulatorClock()
        self.snowflakes = Snowflakes(self.clock)
        founded = self.clock.now() - timedelta(days=365)
        self.application_id = self.snowflakes.at(founded)
        self.bot_user = User(self.application_id, "Sandbox Bot", bot=True,
                             permissions=ALL_PERMISSIONS)
        self.owner = User(self.snowflakes.at(founded), "owner", permissions=ALL_PERMISSIONS)
        config = guild or GuildConfig()
        self.guild = Guild(id=config.id or self.snowflakes.at(founded), name=config.name,
                           channel_id=self.snowflakes.at(founded),
                           channel_name=config.channel_name, created_at=founded,
                           upload_limit=config.upload_limit)
        self.guild.members = {self.bot_user.id: self.bot_user, self.owner.id: self.owner}
        self.interactions: dict[int, InteractionRecord] = {}
        self.by_token: dict[str, InteractionRecord] = {}
        self.registered: dict[int | None, dict[str, dict[str, Any]]] = {None: {},
                                                                       self.guild.id: {}}
        self._command_ids: dict[tuple[int | None, str, int], int] = {}
        self.rate_limiter = RateLimiter(self.clock, rate_limit, rate_limit_per)
        self.faults = FaultInjector()
        self.gateway = Gateway(token, self._on_identify, self._members_chunk,
                               heartbeat_interval_ms)
        self.internal_errors: list[Exception] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path after /api/vN, status)
        self.store = MessageStore(self.clock, self.snowflakes, self.guild, self.bot_user,
                                  self.application_id, self.gateway)
        self._commands_changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = self.api_url = self.gateway_url = ""

    # lifecycle

    async def start(self) -> DiscordEmulator:
        rest = RestApi(self)
        app = web.Application(middlewares=[rest.middleware], client_max_size=1 << 28)
        app.add_routes([*rest.routes(), web.get("/gateway", self.gateway.handle),
                        web.get("/attachments/{channel_id}/{attachment_id}/{filename}",
                                rest.attachment)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind((self.host, 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.base_url = self.store.base_url = f"http://{self.host}:{port}"
        self.api_url = f"{self.base_url}/api/v10"
        self.gateway_url = f"ws://{self.host}:{port}/gateway"
        return self

    async def close(self) -> None:
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordEmulator:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # configuration and faults

    @property
    def channel_id(self) -> int:
        return self.guild.channel_id

    @property
    def messages(self) -> dict[int, StoredMessage]:
        """Every message by id, deleted ones included (``deleted`` is set)."""
        return self.store.messages

    def messages_of(self, record: InteractionRecord) -> list[StoredMessage]:
        """The response and followups an interaction produced, oldest first."""
        return self.store.of_interaction(record)

    async def wait_for_message(self, predicate: MessagePredicate,
                               timeout: float = 5.0) -> StoredMessage:  # noqa: ASYNC109
        """The first message (current state, then each create or edit) matching
        ``predicate``; the returned object keeps changing with later edits."""
        return await self.store.wait_for(predicate, timeout)

    def add_user(self, id: int | None = None, name: str = "user", *,
                 created_at: datetime | None = None,
                 permissions: int = EVERYONE_PERMISSIONS) -> User:
        """A guild member; by default the account is a year old (its id encodes that)."""
        if id is None:
            id = self.snowflakes.at(created_at or self.clock.now() - timedelta(days=365))
        user = User(id, name, permissions=permissions)
        self.guild.members[id] = user
        return user

    def set_upload_limit(self, limit_bytes: int) -> None:
        self.guild.upload_limit = limit_bytes

    def set_bot_permissions(self, permissions: int) -> None:
        """What the bot may do in the channel: sent as each interaction's ``app_permissions``
        and enforced on the bot's own channel messages (Send Messages, Attach Files)."""
        self.bot_user.permissions = permissions

    def set_rate_limit(self, limit: int | None, per: float = 1.0) -> None:
        """``limit`` requests per ``per`` seconds per route bucket; ``None`` switches it off."""
        self.rate_limiter.configure(limit, per)

    def fail_next(self, method: str, path_pattern: str, count: int = 1, status: int = 500, *,
                  after: bool = False) -> None:
        """The next ``count`` requests whose path (after /api/v10, e.g. ``/channels/*/messages``)
        matches the fnmatch pattern answer ``status``; ``method`` may be ``*``. With ``after``
        each request takes effect first and only its answer is replaced, as when Discord's
        front end gives up on a request that the API went on to carry out."""
        self.faults.add(method, path_pattern, count, status, after)

    async def disconnect_gateway(self, resumable: bool = True) -> None:
        """Drop the bot's websocket (close 4000); discord.py reconnects and RESUMEs, or
        re-IDENTIFYs after INVALID_SESSION when ``resumable`` is False."""
        await self.gateway.disconnect(resumable)

    async def wait_until_ready(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Until a bot has identified (or resumed) and received READY and GUILD_CREATE."""
        await asyncio.wait_for(self.gateway.connected.wait(), timeout)

    async def wait_for_commands(self, *names: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Until the bot has registered every named command (globally or in the guild)."""
        async def registered() -> None:
            while not all(self._find_command(name) for name in names):
                self._commands_changed.clear()
                await self._commands_changed.wait()
        await asyncio.wait_for(registered(), timeout)

    def response_latencies(self) -> list[float]:
        """Seconds from INTERACTION_CREATE to the initial callback, per answered interaction."""
        return [r.response_latency for r in self.interactions.values()
                if r.response_latency is not None]

    def unanswered(self) -> list[InteractionRecord]:
        """Interactions past the 3 s deadline without a response: "The application did not
        respond" in a real client."""
        now = self.clock.monotonic()
        return [r for r in self.interactions.values() if r.response_type is None
                and now - r.dispatched_at > FIRST_RESPONSE_SECONDS]

    # gateway callbacks

    def _on_identify(self, session: GatewaySession) -> None:
        session.dispatch("READY", {
            "v": 10, "user": self.bot_user.payload() | {"verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(self.guild.id), "unavailable": True}],
            "session_id": session.id, "session_type": "normal",
            "resume_gateway_url": self.gateway_url, "private_channels": [], "relationships": [],
            "application": {"id": str(self.application_id), "flags": 0}, "_trace": ["sandbox"]})
        session.dispatch("GUILD_CREATE", self.guild.payload(self.owner.id))

    def _members_chunk(self, request: dict[str, Any]) -> dict[str, Any]:
        members = [u.member_payload(self.guild.created_at) for u in self.guild.members.values()]
        chunk: dict[str, Any] = {"guild_id": str(self.guild.id), "members": members,
                                 "chunk_index": 0, "chunk_count": 1, "not_found": []}
        if request.get("nonce") is not None:
            chunk["nonce"] = request["nonce"]
        return chunk

    # commands

    def register_commands(self, scope: int | None,
                          commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Replace a scope's commands (bulk overwrite); ids stay stable per name and type."""
        stored: dict[str, dict[str, Any]] = {}
        for command in commands:
            kind = command.get("type", 1)
            key = (scope, command["name"], kind)
            command_id = self._command_ids.setdefault(key, self.snowflakes.next())
            full = {"default_member_permissions": None, "nsfw": False, "options": [],
                    "integration_types": [0], "contexts": None, "description": ""} | command
            full |= {"id": str(command_id), "application_id": str(self.application_id),
                     "version": str(self.snowflakes.next()), "type": kind}
            if scope is not None:
                full["guild_id"] = str(scope)
            stored[command["name"] if kind == 1 else f"{kind}:{command['name']}"] = full
        self.registered[scope] = stored
        self._commands_changed.set()
        return list(stored.values())

    def _find_command(self, name: str) -> dict[str, Any] | None:
        root = name.split()[0]
        return self.registered[self.guild.id].get(root) or self.registered[None].get(root)

    def _command_path(self, name: str) -> tuple[dict[str, Any], list[tuple[str, int]],
                                                 dict[str, Any]]:
        command = self._find_command(name)
        if command is None:
            raise EmulatorError(f"the bot never registered /{name.split()[0]}")
        node, path = command, []
        for part in name.split()[1:]:
            found = next((o for o in node.get("options") or []
                          if o["name"] == part and o["type"] in (1, 2)), None)
            if found is None:
                raise EmulatorError(f"/{name}: no subcommand {part!r}")
            node = found
            path.append((part, found["type"]))
        if any(o["type"] in (1, 2) for o in node.get("options") or []):
            raise EmulatorError(f"/{name} needs a subcommand")
        return command, path, node

    def _command_data(self, name: str, options: dict[str, Any] | None,
                      focused: str | None = None) -> dict[str, Any]:
        command, path, leaf = self._command_path(name)
        resolved: dict[str, dict[str, Any]] = {}
        built = build_options(self, leaf.get("options") or [], options or {}, resolved, focused)
        for part, kind in reversed(path):
            built = [{"name": part, "type": kind, "options": built}]
        data: dict[str, Any] = {"id": command["id"], "name": command["name"], "type": 1,
                                "options": built}
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        if resolved:
            data["resolved"] = resolved
        return data

    # interactions a user makes

    def _dispatch_interaction(self, kind: int, user: User, data: dict[str, Any],
                              channel: int | None = None,
                              message: StoredMessage | None = None) -> InteractionRecord:
        if self.gateway.session is None:
            raise EmulatorError("no bot has connected to the gateway")
        if user.id not in self.guild.members:
            raise EmulatorError(f"user {user.id} is not in the guild; use add_user()")
        channel_id = channel or self.guild.channel_id
        if channel_id != self.guild.channel_id:
            raise EmulatorError(f"unknown channel {channel_id}")
        record = InteractionRecord(
            id=self.snowflakes.next(), token="aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48),
            type=kind, user=user, channel_id=channel_id, data=data,
            dispatched_at=self.clock.monotonic(),
            message_id=message.id if message is not None else None)
        payload: dict[str, Any] = {
            "id": str(record.id), "application_id": str(self.application_id), "type": kind,
            "data": data, "guild_id": str(self.guild.id),
            "guild": {"id": str(self.guild.id), "locale": "en-US", "features": []},
            "channel": self.guild.channel_payload(), "channel_id": str(channel_id),
            "member": user.member_payload(self.guild.created_at, with_permissions=True),
            "token": record.token, "version": 1,
            "app_permissions": str(self.bot_user.permissions),
            "locale": "en-US", "guild_locale": "en-US", "entitlements": [],
            "entitlement_sku_ids": [], "authorizing_integration_owners": {
                "0": str(self.guild.id)}, "context": 0,
            "attachment_size_limit": self.guild.upload_limit}
        if message is not None:
            payload["message"] = message.payload(self.application_id)
        self.interactions[record.id] = record
        self.by_token[record.token] = record
        self.gateway.dispatch("INTERACTION_CREATE", payload)
        return record

    async def slash(self, user: User, name: str, options: dict[str, Any] | None = None,
                    channel: int | None = None) -> InteractionRecord:
        """Run ``/name`` (``"group sub"`` for subcommands) as ``user``. Option values: str, int,
        float, bool, a ``User`` for user options, ``(filename, bytes)`` for attachments."""
        return self._dispatch_interaction(COMMAND, user, self._command_data(name, options),
                                          channel)

    async def autocomplete(self, user: User, name: str, options: dict[str, Any],
                           focused: str, timeout: float = 5.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """The choices the bot offers while ``user`` types into option ``focused``."""
        data = self._command_data(name, options, focused)
        record = self._dispatch_interaction(AUTOCOMPLETE_INTERACTION, user, data)
        await record.wait_for_response(timeout)
        return record.autocomplete_choices or []

    async def click(self, user: User, message_id: int, custom_id: str,
                    values: list[str] | None = None) -> InteractionRecord:
        """Press a button (or pick ``values`` in a select) present on the stored message."""
        message = self.messages.get(message_id)
        if message is None or message.deleted:
            raise EmulatorError(f"no message {message_id}")
        component = message.component(custom_id)
        if component is None:
            raise EmulatorError(f"message {message_id} has no component {custom_id!r} "
                                f"(it has {message.custom_ids()})")
        if component.get("disabled"):
            raise EmulatorError(f"component {custom_id!r} is disabled")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] != 2:
            data["values"] = values or []
        return self._dispatch_interaction(COMPONENT, user, data, message.channel_id, message)

    async def submit_modal(self, user: User, opened_by: InteractionRecord,
                           values: dict[str, str]) -> InteractionRecord:
        """Submit the modal the bot answered ``opened_by`` with, filling text inputs by
        custom_id."""
        modal = opened_by.modal
        if modal is None:
            raise EmulatorError(f"interaction {opened_by.id} was not answered with a modal")
        rows = modal_rows(modal.get("components") or [], values)
        message = self.messages.get(opened_by.message_id or 0)
        return self._dispatch_interaction(MODAL_SUBMIT, user, {
            "custom_id": modal["custom_id"], "components": rows}, opened_by.channel_id, message)

    # messages
