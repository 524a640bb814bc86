"""What a person types into the message box, turned into the values a slash command takes.

Discord's client parses ``/imagine prompt: a fox steps: 20`` against the command's registered
options and sends typed values; the playground does the same here, so the page can send plain
strings and the emulator gets ints, floats, booleans and members as ``slash()`` expects.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Any

from sandbox.errors import EmulatorError
from sandbox.models import User
from sandbox.options import ATTACHMENT, BOOLEAN, CHANNEL, INTEGER, NUMBER, STRING, USER

TRUE, FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
MENTION = re.compile(r"^<@!?(\d+)>$")


def convert_options(spec: list[dict[str, Any]], given: dict[str, Any],
                    members: Iterable[User], focused: str | None = None) -> dict[str, Any]:
    """``given`` (option name -> typed value) as the emulator's option values; empty strings
    mean "not given", and the focused option of an autocomplete stays the raw text."""
    by_name = {option["name"]: option for option in spec}
    people = list(members)
    values: dict[str, Any] = {}
    for name, raw in given.items():
        option = by_name.get(name)
        if option is None:
            raise EmulatorError(f"no option {name!r}; the command has {sorted(by_name)}")
        if name == focused:
            values[name] = "" if raw is None else str(raw)
        elif raw is not None and raw != "":
            values[name] = _convert(option, raw, people)
    return values


def _convert(option: dict[str, Any], raw: Any, people: list[User]) -> Any:
    kind, name = option["type"], option["name"]
    if kind == STRING:
        return _choice(option, str(raw))
    if kind in (INTEGER, NUMBER):
        return _number(option, raw)
    if kind == BOOLEAN:
        return _boolean(name, raw)
    if kind == USER:
        return _member(name, str(raw), people)
    if kind == ATTACHMENT:
        return _attachment(name, raw)
    if kind == CHANNEL:
        raise EmulatorError(f"option {name!r}: channel options are not supported here")
    raise EmulatorError(f"option {name!r} has an unknown type {kind}")


def _choice(option: dict[str, Any], text: str) -> str:
    """A choice may be typed by its name or its value, as Discord's picker shows names."""
    for choice in option.get("choices") or []:
        if text in (choice["name"], str(choice["value"])):
            return str(choice["value"])
    return text


def _number(option: dict[str, Any], raw: Any) -> int | float:
    name, whole = option["name"], option["type"] == INTEGER
    if isinstance(raw, bool):
        raise EmulatorError(f"option {name!r} needs a number, not {raw!r}")
    text = str(raw).strip()
    for choice in option.get("choices") or []:
        if text == choice["name"]:
            text = str(choice["value"])
    try:
        return int(text) if whole else float(text)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise EmulatorError(f"option {name!r} needs {kind}, not {text!r}") from None


def _boolean(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in TRUE | FALSE:
        return text in TRUE
    raise EmulatorError(f"option {name!r} needs true or false, not {raw!r}")


def _member(name: str, text: str, people: list[User]) -> User:
    """A member by id, mention (``<@id>``) or name, with or without ``@``."""
    text = text.strip()
    match = MENTION.match(text)
    wanted = match.group(1) if match else text.removeprefix("@")
    for person in people:
        if wanted in (str(person.id), person.name):
            return person
    raise EmulatorError(f"option {name!r}: no member {text!r}")


def _attachment(name: str, raw: Any) -> tuple[str, bytes]:
    """``{"filename": ..., "data": base64}``, what the page's file input sends."""
    if not isinstance(raw, dict) or not isinstance(raw.get("filename"), str):
        raise EmulatorError(f"option {name!r} needs a file")
    try:
        return raw["filename"], base64.b64decode(str(raw.get("data", "")), validate=True)
    except binascii.Error:
        raise EmulatorError(f"option {name!r}: the file is not valid base64") from None
