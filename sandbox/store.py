"""Every message the bot made, with its edit history and attachment bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from sandbox.clock import EmulatorClock, Snowflakes
from sandbox.errors import CANNOT_SEND_EMPTY, UNKNOWN_MESSAGE, ApiError, FormErrors
from sandbox.gateway import Gateway
from sandbox.limits import check_message, check_nonce, check_upload
from sandbox.models import (
    EPHEMERAL,
    LOADING,
    Files,
    Guild,
    InteractionRecord,
    MessageRevision,
    StoredAttachment,
    StoredMessage,
    User,
)

GUILD_MESSAGES_INTENT = 1 << 9
KEPT_FLAGS = 4 | 4096 | (1 << 15)  # suppress embeds, suppress notifications, components v2
MessagePredicate = Callable[[StoredMessage], bool]
#: Told of every create, edit and delete (event: "create", "edit" or "delete"), ephemeral
#: messages included: what an observer such as the playground page follows.
MessageListener = Callable[[StoredMessage, str], None]
#: How long a Create Message nonce is remembered for ``enforce_nonce``. Discord documents "the
#: past few minutes" without a number; a client may rely on retries within seconds, no more.
NONCE_WINDOW_SECONDS = 120.0


class MessageStore:
    """Creates and edits messages under Discord's rules and tells waiters and the bot.

    ``base_url`` is where attachment bytes are served (set once the server listens).
    """

    def __init__(self, clock: EmulatorClock, snowflakes: Snowflakes, guild: Guild, author: User,
                 application_id: int, gateway: Gateway) -> None:
        self.clock = clock
        self.snowflakes = snowflakes
        self.guild = guild
        self.author = author
        self.application_id = application_id
        self.gateway = gateway
        self.base_url = ""
        self.messages: dict[int, StoredMessage] = {}
        self.attachments: dict[int, StoredAttachment] = {}
        self._waiters: list[tuple[MessagePredicate, asyncio.Future[StoredMessage]]] = []
        self.listeners: list[MessageListener] = []
        #: (author id, nonce) -> (monotonic time of the create, message id).
        self._nonces: dict[tuple[int, str], tuple[float, int]] = {}

    def upload(self, channel_id: int, filename: str, data: bytes,
               content_type: str | None = None, description: str | None = None
               ) -> StoredAttachment:
        """Store bytes as an attachment served back over HTTP (for Attachment.read())."""
        attachment_id = self.snowflakes.next()
        url = f"{self.base_url}/attachments/{channel_id}/{attachment_id}/{quote(filename)}"
        stored = StoredAttachment(attachment_id, filename, data, url, content_type, description)
        self.attachments[attachment_id] = stored
        return stored

    def create(self, channel_id: int, body: dict[str, Any], files: Files,
               record: InteractionRecord | None, allowed_flags: int,
               empty_ok: bool = False, nonce: str | int | None = None) -> StoredMessage:
        """A new message; ``record`` makes it an interaction (webhook) message. Flags outside
        ``allowed_flags`` and the always-kept ones are dropped, as Discord does."""
        check_message(body, has_files=bool(files), creating=not empty_ok)
        check_upload(files, self.guild.upload_limit)
        now = self.clock.now()
        revision = MessageRevision(
            content=body.get("content") or "", embeds=body.get("embeds") or [],
            components=body.get("components") or [],
            attachments=self._attachments(body, files, [], channel_id),
            flags=int(body.get("flags") or 0) & (allowed_flags | KEPT_FLAGS), at=now)
        message = StoredMessage(
            id=self.snowflakes.next(), channel_id=channel_id, guild_id=self.guild.id,
            author=self.author, created_at=now, history=[revision],
            interaction_id=None if record is None else record.id,
            webhook_id=None if record is None else self.application_id, nonce=nonce)
        self.messages[message.id] = message
        self._notify(message, "MESSAGE_CREATE")
        return message

    def post(self, channel_id: int, body: dict[str, Any], files: Files) -> StoredMessage:
        """Create Message in a channel, honouring ``nonce`` and ``enforce_nonce`` as Discord
        documents them: with ``enforce_nonce``, a nonce the same author used in the last
        NONCE_WINDOW_SECONDS returns the message created then instead of a new one (and 404
        Unknown Message if that message was deleted since). Without it the nonce is only
        echoed back."""
        check_nonce(body)
        nonce = body.get("nonce")
        key = (self.author.id, str(nonce))
        now = self.clock.monotonic()
        if nonce is not None and body.get("enforce_nonce"):
            earlier = self._nonces.get(key)
            if earlier is not None and now - earlier[0] < NONCE_WINDOW_SECONDS:
                message = self.messages[earlier[1]]
                if message.deleted:
                    raise ApiError(404, UNKNOWN_MESSAGE, "Unknown Message")
                return message
        message = self.create(channel_id, body, files, None, allowed_flags=0, nonce=nonce)
        if nonce is not None:
            self._nonces[key] = (now, message.id)
        return message

    def edit(self, message: StoredMessage, body: dict[str, Any], files: Files) -> None:
        """A new revision: keys present in ``body`` replace, others stay; editing ends the
        "thinking" state and never changes ephemerality."""
        check_message(body, has_files=bool(files), creating=False)
        check_upload(files, self.guild.upload_limit)
        old = message.current
        flags = old.flags & ~LOADING
        if body.get("flags") is not None:
            flags = (int(body["flags"]) & KEPT_FLAGS) | (old.flags & EPHEMERAL)
        revision = MessageRevision(
            content=(body.get("content") or "") if "content" in body else old.content,
            embeds=(body.get("embeds") or []) if "embeds" in body else old.embeds,
            components=(body.get("components") or []) if "components" in body
            else old.components,
            attachments=self._attachments(body, files, old.attachments, message.channel_id),
            flags=flags, at=self.clock.now())
        if not (revision.content or revision.embeds or revision.components
                or revision.attachments):
            raise ApiError(400, CANNOT_SEND_EMPTY, "Cannot send an empty message")
        message.history.append(revision)
        self._notify(message, "MESSAGE_UPDATE")

    def _attachments(self, body: dict[str, Any], files: Files,
                     existing: list[StoredAttachment], channel_id: int) -> list[StoredAttachment]:
        """``attachments`` lists kept ids and new uploads by file index; absent keeps all."""
        entries = body.get("attachments")
        if entries is None:
            entries = [{"id": a.id} for a in existing] + [{"id": index} for index in files]
        kept = {a.id: a for a in existing}
        result: list[StoredAttachment] = []
        errors = FormErrors()
        for position, entry in enumerate(entries):
            key = int(entry["id"])
            if key in kept:
                result.append(kept[key])
            elif key in files:
                filename, data, content_type = files[key]
                result.append(self.upload(channel_id, entry.get("filename") or filename, data,
                                          content_type, entry.get("description")))
            else:
                errors.add(("attachments", position, "id"), "ATTACHMENT_NOT_FOUND",
                           "Unknown attachment")
        errors.raise_if_any()
        return result

    def delete(self, message: StoredMessage) -> None:
        message.deleted = True
        self._tell_listeners(message, "delete")
        if self._wants_events(message):
            self.gateway.dispatch("MESSAGE_DELETE", {"id": str(message.id), "channel_id": str(
                message.channel_id), "guild_id": str(message.guild_id)})

    def of_interaction(self, record: InteractionRecord) -> list[StoredMessage]:
        return [m for m in self.messages.values() if m.interaction_id == record.id]

    def _wants_events(self, message: StoredMessage) -> bool:
        session = self.gateway.session
        return (session is not None and not message.ephemeral
                and bool(session.intents & GUILD_MESSAGES_INTENT))

    def _notify(self, message: StoredMessage, event: str) -> None:
        """Wake ``wait_for`` waiters, and tell the bot as Discord does (non-ephemeral
        messages, GUILD_MESSAGES intent)."""
        if self._wants_events(message):
            member = self.author.member_payload(self.guild.created_at)
            del member["user"]
            self.gateway.dispatch(event, message.payload(self.application_id) | {
                "member": member})
        self._tell_listeners(message, "create" if event == "MESSAGE_CREATE" else "edit")
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                if predicate(message):
                    future.set_result(message)
            except Exception as error:  # the test's predicate failed; surface it to the waiter
                future.set_exception(error)

    def _tell_listeners(self, message: StoredMessage, event: str) -> None:
        for listener in self.listeners:
            listener(message, event)

    async def wait_for(self, predicate: MessagePredicate,
                       timeout: float = 5.0) -> StoredMessage:  # noqa: ASYNC109
        for message in self.messages.values():
            if not message.deleted and predicate(message):
                return message
        future: asyncio.Future[StoredMessage] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            recent = [(m.id, m.content[:60]) for m in list(self.messages.values())[-5:]]
            raise TimeoutError(f"no message matched within {timeout}s; recent: {recent}"
                               ) from None
        finally:
            self._waiters.remove(entry)
