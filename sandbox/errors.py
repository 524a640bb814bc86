"""Discord's JSON error shape and the exact JSON responses discord.py expects."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

# Discord answers through Google's front end; discord.py only retries a 429 that carries Via.
BASE_HEADERS = {"Via": "1.1 google"}

UNKNOWN_CHANNEL = 10003
UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
UNKNOWN_INTERACTION = 10062
UNKNOWN_USER = 10013
ENTITY_TOO_LARGE = 40005
ALREADY_ACKNOWLEDGED = 40060
MISSING_ACCESS = 50001
NOT_AUTHOR = 50005
MISSING_PERMISSIONS = 50013
CANNOT_SEND_EMPTY = 50006
INVALID_WEBHOOK_TOKEN = 50027
INVALID_FORM_BODY = 50035
INVALID_JSON = 50109


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    """JSON with ``Content-Type: application/json`` exactly (discord.py compares the header)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={**BASE_HEADERS, "Content-Type": "application/json", **(headers or {})},
    )


class ApiError(Exception):
    """An error answered to the client as Discord would: ``{"code", "message", "errors"?}``."""

    def __init__(self, status: int, code: int, message: str,
                 errors: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        return json_response(body, self.status)


class FormErrors:
    """Collects field errors into Discord's nested ``errors`` tree for 50035 Invalid Form Body."""

    def __init__(self) -> None:
        self.tree: dict[str, Any] = {}

    def add(self, path: tuple[str | int, ...], code: str, message: str) -> None:
        node = self.tree
        for part in path:
            node = node.setdefault(str(part), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def max_length(self, path: tuple[str | int, ...], limit: int) -> None:
        self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def raise_if_any(self) -> None:
        if self.tree:
            raise ApiError(400, INVALID_FORM_BODY, "Invalid Form Body", self.tree)


class EmulatorError(Exception):
    """A control-API call a real Discord client could not make (unknown command, no button...)."""
