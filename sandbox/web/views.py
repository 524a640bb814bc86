"""What the page sees: messages, commands and users as JSON, and who may see which message.

The page renders exactly what the bot sent (embeds and components stay Discord's own JSON);
this module only adds what a Discord client knows without being told: who ran the command,
whether a message is ephemeral or still "thinking", and an alt text for each image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sandbox.models import (
    EPHEMERAL,
    LOADING,
    InteractionRecord,
    StoredMessage,
    User,
    walk_components,
)
from sandbox.rest import COMMAND, MODAL_SUBMIT

if TYPE_CHECKING:
    from sandbox.emulator import DiscordEmulator

SUBCOMMAND, GROUP = 1, 2


@dataclass(frozen=True)
class Person:
    """A playground user: the emulator's guild member plus how the page draws them."""

    user: User
    colour: str
    admin: bool = False

    def payload(self) -> dict[str, Any]:
        return {"id": str(self.user.id), "name": self.user.name, "colour": self.colour,
                "admin": self.admin}


def visible_to(emulator: DiscordEmulator, message: StoredMessage, user_id: int) -> bool:
    """Everyone sees channel messages; an ephemeral one only the user whose interaction got it."""
    if not message.flags & EPHEMERAL:
        return True
    record = emulator.interactions.get(message.interaction_id or 0)
    return record is not None and record.user.id == user_id


def message_json(emulator: DiscordEmulator, message: StoredMessage) -> dict[str, Any]:
    """One message as the page draws it; attachments are served by the page's own server."""
    current = message.current
    record = emulator.interactions.get(message.interaction_id or 0)
    alt = prompt_of(emulator, message)
    body: dict[str, Any] = {
        "id": str(message.id), "author": {"id": str(message.author.id),
                                          "name": message.author.name,
                                          "bot": message.author.bot},
        "timestamp": message.created_at.isoformat(), "content": current.content,
        "embeds": current.embeds, "components": current.components,
        "attachments": [{"id": str(a.id), "filename": a.filename,
                         "url": f"/api/attachments/{a.id}/{a.filename}",
                         "content_type": a.content_type, "alt": a.description or alt or a.filename}
                        for a in current.attachments],
        "ephemeral": bool(current.flags & EPHEMERAL), "loading": bool(current.flags & LOADING),
        "edited": message.edited, "deleted": message.deleted, "interaction": None}
    if record is not None:
        body["interaction"] = {"id": str(record.id), "user": str(record.user.id),
                               "user_name": record.user.name,
                               "command": command_line(record)}
    return body


def command_line(record: InteractionRecord) -> str | None:
    """``/credits-admin grant`` for a slash command; None for clicks and modals."""
    if record.type != COMMAND:
        return None
    parts = [record.data["name"]]
    options = record.data.get("options") or []
    while options and options[0].get("type") in (SUBCOMMAND, GROUP):
        parts.append(options[0]["name"])
        options = options[0].get("options") or []
    return "/" + " ".join(parts)


def prompt_of(emulator: DiscordEmulator, message: StoredMessage, depth: int = 0) -> str | None:
    """The prompt behind a message's images: the command's ``prompt`` option or the form's
    ``prompt`` input, else the result embed's description (where the bot shows the prompt),
    else that of the message clicked."""
    record = emulator.interactions.get(message.interaction_id or 0)
    if record is not None and record.type == COMMAND:
        options = record.data.get("options") or []
        while options and options[0].get("type") in (SUBCOMMAND, GROUP):
            options = options[0].get("options") or []
        prompt = next((o["value"] for o in options if o["name"] == "prompt"), None)
        if isinstance(prompt, str):
            return prompt
    if record is not None and record.type == MODAL_SUBMIT:
        submitted = walk_components(record.data.get("components") or [])
        prompt = next((c.get("value") for c in submitted if c.get("custom_id") == "prompt"), None)
        if isinstance(prompt, str) and prompt:
            return prompt
    described = next((e["description"] for e in message.embeds if e.get("description")), None)
    if described and message.attachments:
        return str(described)
    if record is not None and record.message_id is not None and depth < 5:
        parent = emulator.messages.get(record.message_id)
        if parent is not None:
            return prompt_of(emulator, parent, depth + 1)
    return None


def commands_json(emulator: DiscordEmulator, user: User) -> list[dict[str, Any]]:
    """Every chat command the user may run, one entry per runnable path (``credits-admin
    grant``), with its options as registered; commands whose default permissions the user
    lacks are hidden, as Discord's client hides them."""
    found: dict[str, dict[str, Any]] = {}
    for scope in (None, emulator.guild.id):
        for command in emulator.registered[scope].values():
            if command.get("type", 1) != 1 or not _permitted(command, user):
                continue
            for path, leaf in _leaves([command["name"]], command):
                found[" ".join(path)] = {"name": " ".join(path),
                                         "description": leaf.get("description", ""),
                                         "options": leaf.get("options") or []}
    return [found[name] for name in sorted(found)]


def _permitted(command: dict[str, Any], user: User) -> bool:
    needed = command.get("default_member_permissions")
    return needed is None or int(needed) & user.permissions == int(needed)


def _leaves(path: list[str], node: dict[str, Any]) -> list[tuple[list[str], dict[str, Any]]]:
    subs = [o for o in node.get("options") or [] if o.get("type") in (SUBCOMMAND, GROUP)]
    if not subs:
        return [(path, node)]
    return [leaf for sub in subs for leaf in _leaves([*path, sub["name"]], sub)]
