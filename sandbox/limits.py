"""Discord's limits on message bodies, checked the way Discord answers them (50035 / 50006)."""

from __future__ import annotations

from typing import Any

from sandbox.errors import (
    CANNOT_SEND_EMPTY,
    ENTITY_TOO_LARGE,
    MISSING_PERMISSIONS,
    ApiError,
    FormErrors,
)
from sandbox.models import Files, walk_components

CONTENT_MAX = 2000
EMBEDS_MAX = 10
EMBED_TOTAL_MAX = 6000
EMBED_FIELDS_MAX = 25
ROWS_MAX = 5
BUTTONS_PER_ROW_MAX = 5
CUSTOM_ID_MAX = 100
LABEL_MAX = 80
CHOICES_MAX = 25
NONCE_MAX = 25
COMPONENTS_V2 = 1 << 15
ACTION_ROW, BUTTON, LINK_STYLE, PREMIUM_STYLE = 1, 2, 5, 6
SEND_MESSAGES, ATTACH_FILES = 1 << 11, 1 << 15


def check_permissions(permissions: int, *, creating: bool, has_files: bool) -> None:
    """The bot's own channel messages: creating one needs Send Messages, uploading files
    needs Attach Files (interaction responses and followups need neither)."""
    needed = (SEND_MESSAGES if creating else 0) | (ATTACH_FILES if has_files else 0)
    if permissions & needed != needed:
        raise ApiError(403, MISSING_PERMISSIONS, "Missing Permissions")


def check_message(body: dict[str, Any], *, has_files: bool, creating: bool) -> None:
    """Reject a message create/edit body that Discord would reject."""
    errors = FormErrors()
    content = body.get("content")
    if content is not None and len(content) > CONTENT_MAX:
        errors.max_length(("content",), CONTENT_MAX)
    embeds = body.get("embeds") or []
    if len(embeds) > EMBEDS_MAX:
        errors.max_length(("embeds",), EMBEDS_MAX)
    _check_embeds(embeds, errors)
    _check_components(body.get("components") or [], int(body.get("flags") or 0), errors)
    errors.raise_if_any()
    if creating and not (content or embeds or body.get("components") or has_files
                         or body.get("poll") or body.get("sticker_ids")):
        raise ApiError(400, CANNOT_SEND_EMPTY, "Cannot send an empty message")


def check_nonce(body: dict[str, Any]) -> None:
    """A Create Message ``nonce`` is an integer or a string of at most 25 characters."""
    nonce = body.get("nonce")
    if nonce is None:
        return
    errors = FormErrors()
    if isinstance(nonce, bool) or not isinstance(nonce, int | str):
        errors.add(("nonce",), "NONCE_TYPE_INVALID", "Nonce must be an integer or a string.")
    elif len(str(nonce)) > NONCE_MAX:
        errors.max_length(("nonce",), NONCE_MAX)
    errors.raise_if_any()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _check_embeds(embeds: list[dict[str, Any]], errors: FormErrors) -> None:
    total = 0
    for index, embed in enumerate(embeds):
        where = ("embeds", index)
        title, description = _text(embed.get("title")), _text(embed.get("description"))
        footer = _text((embed.get("footer") or {}).get("text"))
        author = _text((embed.get("author") or {}).get("name"))
        for key, value, limit in (("title", title, 256), ("description", description, 4096)):
            if len(value) > limit:
                errors.max_length((*where, key), limit)
        if len(footer) > 2048:
            errors.max_length((*where, "footer", "text"), 2048)
        if len(author) > 256:
            errors.max_length((*where, "author", "name"), 256)
        fields = embed.get("fields") or []
        if len(fields) > EMBED_FIELDS_MAX:
            errors.max_length((*where, "fields"), EMBED_FIELDS_MAX)
        total += len(title) + len(description) + len(footer) + len(author)
        for number, item in enumerate(fields):
            name, value = _text(item.get("name")), _text(item.get("value"))
            if len(name) > 256:
                errors.max_length((*where, "fields", number, "name"), 256)
            if len(value) > 1024:
                errors.max_length((*where, "fields", number, "value"), 1024)
            total += len(name) + len(value)
    if total > EMBED_TOTAL_MAX:
        errors.add(("embeds",), "MAX_EMBED_SIZE_EXCEEDED",
                   "Embed size exceeds maximum size of 6000")


def _check_components(components: list[dict[str, Any]], flags: int, errors: FormErrors) -> None:
    if not flags & COMPONENTS_V2:
        if len(components) > ROWS_MAX:
            errors.max_length(("components",), ROWS_MAX)
        for index, row in enumerate(components):
            if row.get("type") != ACTION_ROW:
                errors.add(("components", index, "type"), "UNION_TYPE_CHOICES",
                           "Value of field \"type\" must be one of (1,).")
            elif len(row.get("components") or []) > BUTTONS_PER_ROW_MAX:
                errors.max_length(("components", index, "components"), BUTTONS_PER_ROW_MAX)
    seen: set[str] = set()
    for index, component in enumerate(walk_components(components)):
        check_component(component, ("components", index), errors, seen)


def check_component(component: dict[str, Any], where: tuple[str | int, ...],
                    errors: FormErrors, seen: set[str]) -> None:
    """custom_id present, 1-100 characters, unique; button labels at most 80."""
    custom_id = component.get("custom_id")
    is_link = component.get("type") == BUTTON and component.get("style") in (LINK_STYLE,
                                                                           PREMIUM_STYLE)
    if custom_id is None:
        if component.get("type") not in (ACTION_ROW, *range(9, 19)) and not is_link:
            errors.add((*where, "custom_id"), "BASE_TYPE_REQUIRED", "This field is required")
    elif not 1 <= len(custom_id) <= CUSTOM_ID_MAX:
        errors.add((*where, "custom_id"), "BASE_TYPE_BAD_LENGTH",
                   f"Must be between 1 and {CUSTOM_ID_MAX} in length.")
    elif custom_id in seen:
        errors.add((*where, "custom_id"), "COMPONENT_CUSTOM_ID_DUPLICATED",
                   "Component custom id cannot be duplicated")
    else:
        seen.add(custom_id)
    if component.get("type") == BUTTON and len(_text(component.get("label"))) > LABEL_MAX:
        errors.max_length((*where, "label"), LABEL_MAX)


def check_upload(files: Files, limit: int) -> None:
    """Each file at most the guild's upload limit (10 MiB unless configured)."""
    for _, data, _ in files.values():
        if len(data) > limit:
            raise ApiError(413, ENTITY_TOO_LARGE, "Request entity too large")
