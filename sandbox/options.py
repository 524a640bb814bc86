"""What a user types (slash-command options, modal fields), checked as Discord's client does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sandbox.errors import EmulatorError
from sandbox.models import User

if TYPE_CHECKING:
    from sandbox.emulator import DiscordEmulator

STRING, INTEGER, BOOLEAN, USER, CHANNEL, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 10, 11


def build_options(emulator: DiscordEmulator, spec: list[dict[str, Any]], given: dict[str, Any],
                  resolved: dict[str, dict[str, Any]], focused: str | None) -> list[dict[str, Any]]:
    """Option payloads for ``given``; fills ``resolved`` for users and attachments."""
    by_name = {option["name"]: option for option in spec}
    if focused is not None and not by_name.get(focused, {}).get("autocomplete"):
        raise EmulatorError(f"option {focused!r} has no autocomplete")
    built = []
    for name, value in given.items():
        option = by_name.get(name)
        if option is None:
            raise EmulatorError(f"no option {name!r}; the command has {sorted(by_name)}")
        if name == focused:
            built.append({"name": name, "type": option["type"], "value": str(value),
                          "focused": True})
        else:
            built.append({"name": name, "type": option["type"],
                          "value": _value(emulator, option, value, resolved)})
    missing = [o["name"] for o in spec if o.get("required") and o["name"] not in given]
    if missing and focused is None:
        raise EmulatorError(f"required options missing: {missing}")
    return built


def _value(emulator: DiscordEmulator, option: dict[str, Any], value: Any,
           resolved: dict[str, dict[str, Any]]) -> Any:
    kind, name = option["type"], option["name"]
    if kind == STRING and isinstance(value, str):
        if not option.get("min_length", 0) <= len(value) <= option.get("max_length", 6000):
            raise EmulatorError(f"option {name!r}: length {len(value)} is out of range")
    elif kind in (INTEGER, NUMBER) and isinstance(value, int | float) and not isinstance(
            value, bool) and (kind == NUMBER or isinstance(value, int)):
        low, high = option.get("min_value"), option.get("max_value")
        if (low is not None and value < low) or (high is not None and value > high):
            raise EmulatorError(f"option {name!r}: {value} is out of range [{low}, {high}]")
    elif kind == BOOLEAN and isinstance(value, bool):
        pass
    elif kind == USER and isinstance(value, User):
        resolved.setdefault("users", {})[str(value.id)] = value.payload()
        member = value.member_payload(emulator.guild.created_at, with_permissions=True)
        del member["user"]
        resolved.setdefault("members", {})[str(value.id)] = member
        return str(value.id)
    elif kind == ATTACHMENT and isinstance(value, tuple) and len(value) == 2:
        stored = emulator.store.upload(emulator.channel_id, value[0], bytes(value[1]))
        resolved.setdefault("attachments", {})[str(stored.id)] = stored.payload()
        return str(stored.id)
    else:
        raise EmulatorError(f"option {name!r} (type {kind}) cannot take {value!r}")
    choices = [choice["value"] for choice in option.get("choices") or []]
    if choices and value not in choices:
        raise EmulatorError(f"option {name!r}: {value!r} is not one of {choices}")
    return value


def modal_rows(layout: list[dict[str, Any]], values: dict[str, str]) -> list[dict[str, Any]]:
    """The submitted components of a modal the bot sent, filled from ``values`` by custom_id."""
    known = {c.get("custom_id") for row in layout for c in _row_inputs(row)}
    if unknown := set(values) - known:
        raise EmulatorError(f"the modal has no inputs {sorted(unknown)}")
    return [_modal_row(row, values) for row in layout]


def _row_inputs(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The inputs of one modal row: an action row's components or a label's component."""
    if row.get("type") == 1:
        return list(row.get("components") or [])
    return [row.get("component") or {}]


def _modal_row(row: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """The submitted shape of one modal row (action row or label) holding text inputs."""
    submitted = []
    for component in _row_inputs(row):
        custom_id = component.get("custom_id", "")
        value = values.get(custom_id, component.get("value") or "")
        if component.get("required", True) and component.get("type") == 4 and not value:
            raise EmulatorError(f"modal input {custom_id!r} is required")
        if len(value) > component.get("max_length", 4000) or len(value) < component.get(
                "min_length", 0):
            raise EmulatorError(f"modal input {custom_id!r} has the wrong length")
        submitted.append({"type": component.get("type", 4), "custom_id": custom_id,
                          "value": value})
    if row.get("type") == 1:
        return {"type": 1, "components": submitted}
    return {"type": row.get("type", 18), "component": submitted[0]}
