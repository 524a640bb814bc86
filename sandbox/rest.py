"""The REST API discord.py calls, under /api/v9 and /api/v10."""

from __future__ import annotations

import json
import logging
import mimetypes
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from sandbox.errors import (
    ALREADY_ACKNOWLEDGED,
    BASE_HEADERS,
    INVALID_FORM_BODY,
    INVALID_JSON,
    INVALID_WEBHOOK_TOKEN,
    MISSING_ACCESS,
    NOT_AUTHOR,
    UNKNOWN_CHANNEL,
    UNKNOWN_INTERACTION,
    UNKNOWN_MESSAGE,
    UNKNOWN_USER,
    UNKNOWN_WEBHOOK,
    ApiError,
    FormErrors,
    json_response,
)
from sandbox.limits import CHOICES_MAX, check_component, check_permissions
from sandbox.models import (
    EPHEMERAL,
    LOADING,
    Files,
    InteractionRecord,
    StoredMessage,
    walk_components,
)

if TYPE_CHECKING:
    from sandbox.emulator import DiscordEmulator

_log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FIRST_RESPONSE_SECONDS = 3.0
TOKEN_LIFETIME_SECONDS = 15 * 60
MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE, AUTOCOMPLETE, MODAL = 4, 5, 6, 7, 8, 9
COMMAND, COMPONENT, AUTOCOMPLETE_INTERACTION, MODAL_SUBMIT = 2, 3, 4, 5
ALLOWED_RESPONSES = {COMMAND: {MESSAGE, DEFERRED_MESSAGE, MODAL},
                     COMPONENT: {MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE, MODAL},
                     AUTOCOMPLETE_INTERACTION: {AUTOCOMPLETE},
                     MODAL_SUBMIT: {MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, UPDATE}}
COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")
NO_AUTH_PREFIXES = ("/webhooks/", "/interactions/")


def _no_content() -> web.Response:
    return web.Response(status=204, headers=BASE_HEADERS)


def _api_path(template: str) -> str:
    """Under /api/v9 or /api/v10; ``*_id`` parts only match snowflakes (else 404, as on
    Discord), and webhook message ids also ``@original``."""
    def pattern(match: re.Match[str]) -> str:
        webhook_message = match[1] == "message_id" and template.startswith("/webhooks/")
        digits = r"(\d+|@original)" if webhook_message else r"\d+"
        return f"{{{match[1]}:{digits}}}"
    return "/api/v{version:(9|10)}" + re.sub(r"\{(\w+_id)\}", pattern, template)


async def read_body(request: web.Request) -> tuple[Any, Files]:
    """A JSON body, or multipart ``payload_json`` plus ``files[n]`` parts."""
    files: Files = {}
    if not request.content_type.startswith("multipart/"):
        text = await request.text()
        return (json.loads(text) if text else {}), files
    body: dict[str, Any] = {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        name = part.name or ""
        if name == "payload_json":
            body = json.loads(await part.text())
        elif match := re.fullmatch(r"files\[(\d+)\]", name):
            data = bytes(await part.read())
            files[int(match.group(1))] = (part.filename or f"file{match.group(1)}", data,
                                          part.headers.get("Content-Type"))
    return body, files


class RestApi:
    def __init__(self, emulator: DiscordEmulator) -> None:
        self.em = emulator

    def routes(self) -> list[web.RouteDef]:
        table = [
            ("GET", "/users/@me", self.me),
            ("GET", "/users/{user_id}", self.user),
            ("GET", "/oauth2/applications/@me", self.application),
            ("GET", "/applications/@me", self.application),
            ("GET", "/gateway", self.gateway),
            ("GET", "/gateway/bot", self.gateway),
            ("GET", "/applications/{app_id}/commands", self.get_commands),
            ("PUT", "/applications/{app_id}/commands", self.put_commands),
            ("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self.get_commands),
            ("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self.put_commands),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self.callback),
            ("POST", "/webhooks/{app_id}/{token}", self.followup),
            ("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", self.webhook_message),
            ("PATCH", "/webhooks/{app_id}/{token}/messages/{message_id}", self.webhook_message),
            ("DELETE", "/webhooks/{app_id}/{token}/messages/{message_id}", self.webhook_message),
            ("GET", "/channels/{channel_id}", self.channel),
            ("POST", "/channels/{channel_id}/messages", self.channel_post),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self.channel_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self.channel_message),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self.channel_message),
        ]
        return [web.route(method, _api_path(path), handler) for method, path, handler in table]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Faults, auth and rate limits first; ApiError becomes Discord's error JSON."""
        path = re.sub(r"^/api/v\d+", "", request.path)
        if not request.path.startswith("/api/"):
            return await handler(request)
        fault = self.em.faults.take(request.method, path, after=False)
        if fault is not None:
            self.em.requests.append((request.method, path, fault.status))
            return fault.response()
        resource = request.match_info.route.resource
        if resource is None:
            return ApiError(404, 0, "404: Not Found").response()
        if not path.startswith(NO_AUTH_PREFIXES) and request.headers.get(
                "Authorization") != f"Bot {self.em.token}":
            return ApiError(401, 0, "401: Unauthorized").response()
        info = request.match_info
        major = info.get("channel_id") or info.get("guild_id") or info.get("token") or ""
        bucket = f"{request.method} {resource.canonical.split('}', 1)[-1]} {major}"
        headers, limited = self.em.rate_limiter.check(bucket)
        if limited is not None:
            self.em.requests.append((request.method, path, limited.status))
            return limited
        try:
            response = await handler(request)
        except ApiError as error:
            response = error.response()
        except json.JSONDecodeError as error:
            response = ApiError(400, INVALID_JSON,
                                f"The request body contains invalid JSON ({error})").response()
        except web.HTTPException:
            raise
        except Exception as error:  # an emulator bug: keep it visible (503 is not retried)
            _log.exception("sandbox failed on %s %s", request.method, path)
            self.em.internal_errors.append(error)
            response = ApiError(503, 0, f"503: sandbox error {error!r}").response()
        lost = self.em.faults.take(request.method, path, after=True)
        if lost is not None:  # it took effect; only its answer is lost on the way back
            response = lost.response()
        response.headers.update(headers)
        self.em.requests.append((request.method, path, response.status))
        return response

    # login and gateway discovery

    async def me(self, request: web.Request) -> web.Response:
        return json_response(self.em.bot_user.payload() | {"verified": True, "mfa_enabled": False})

    async def user(self, request: web.Request) -> web.Response:
        user = self.em.guild.members.get(int(request.match_info["user_id"]))
        if user is None:
            raise ApiError(404, UNKNOWN_USER, "Unknown User")
        return json_response(user.payload())

    async def application(self, request: web.Request) -> web.Response:
        em = self.em
        return json_response({
            "id": str(em.application_id), "name": em.bot_user.name, "icon": None,
            "description": "", "summary": "", "rpc_origins": [], "bot_public": True,
            "bot_require_code_grant": False, "owner": em.owner.payload(), "team": None,
            "verify_key": "0" * 64, "flags": 0, "bot": em.bot_user.payload(),
            "interactions_endpoint_url": None, "redirect_uris": [], "tags": [],
            "approximate_guild_count": 1, "integration_types_config": {"0": {}}})

    async def gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.em.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}})

    # application commands

    def _scope(self, request: web.Request) -> int | None:
        if int(request.match_info["app_id"]) != self.em.application_id:
            raise ApiError(403, MISSING_ACCESS, "Missing Access")
        guild = request.match_info.get("guild_id")
        if guild is not None and int(guild) != self.em.guild.id:
            raise ApiError(403, MISSING_ACCESS, "Missing Access")
        return None if guild is None else int(guild)

    async def get_commands(self, request: web.Request) -> web.Response:
        return json_response(list(self.em.registered[self._scope(request)].values()))

    async def put_commands(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        commands, _ = await read_body(request)
        errors = FormErrors()
        seen: set[tuple[str, int]] = set()
        for index, command in enumerate(commands):
            _check_command(command, (index,), errors)
            key = (command.get("name", ""), command.get("type", 1))
            if key in seen:
                errors.add((index, "name"), "APPLICATION_COMMANDS_DUPLICATE_NAME",
                           "Application command names must be unique")
            seen.add(key)
        errors.raise_if_any()
        return json_response(self.em.register_commands(scope, commands))

    # interactions

    async def callback(self, request: web.Request) -> web.Response:
        em = self.em
        record = em.interactions.get(int(request.match_info["interaction_id"]))
        if record is None or record.token != request.match_info["token"]:
            raise ApiError(404, UNKNOWN_INTERACTION, "Unknown interaction")
        body, files = await read_body(request)
        if em.clock.monotonic() - record.dispatched_at > FIRST_RESPONSE_SECONDS:
            record.rejections.append(UNKNOWN_INTERACTION)
            raise ApiError(404, UNKNOWN_INTERACTION, "Unknown interaction")
        if record.response_type is not None:
            record.rejections.append(ALREADY_ACKNOWLEDGED)
            raise ApiError(400, ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged.")
        kind, data = int(body.get("type") or 0), body.get("data") or {}
        if kind not in ALLOWED_RESPONSES[record.type]:
            errors = FormErrors()
            errors.add(("type",), "INTERACTION_RESPONSE_TYPE_INVALID",
                       f"Response type {kind} is not valid for interaction type {record.type}")
            errors.raise_if_any()
        message = self._respond(record, kind, data, files)
        record.response_type, record.responded_at = kind, em.clock.monotonic()
        record.responded.set()
        if request.query.get("with_response", "").lower() not in ("1", "true"):
            return _no_content()
        interaction: dict[str, Any] = {"id": str(record.id), "type": record.type}
        resource: dict[str, Any] = {"type": kind}
        if message is not None:
            interaction |= {"response_message_id": str(message.id),
                            "response_message_loading": kind == DEFERRED_MESSAGE,
                            "response_message_ephemeral": message.ephemeral}
            resource["message"] = message.payload(em.application_id)
        return json_response({"interaction": interaction, "resource": resource})

    def _respond(self, record: InteractionRecord, kind: int, data: dict[str, Any],
                 files: Files) -> StoredMessage | None:
        em = self.em
        if kind == MESSAGE:
            message = em.store.create(record.channel_id, data, files, record,
                                      allowed_flags=EPHEMERAL)
            record.original_message_id = message.id
            return message
        if kind == DEFERRED_MESSAGE:
            flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            message = em.store.create(record.channel_id, {"flags": flags}, {}, record,
                                      allowed_flags=EPHEMERAL | LOADING, empty_ok=True)
            record.original_message_id = message.id
            return message
        if kind in (DEFERRED_UPDATE, UPDATE):
            record.original_message_id = record.message_id
            target = em.messages.get(record.message_id or 0)
            if target is None:
                raise ApiError(400, INVALID_FORM_BODY, "Invalid Form Body")
            if kind == UPDATE:
                em.store.edit(target, data, files)
            return target if kind == UPDATE else None
        if kind == AUTOCOMPLETE:
            choices = data.get("choices") or []
            if len(choices) > CHOICES_MAX:
                errors = FormErrors()
                errors.max_length(("data", "choices"), CHOICES_MAX)
                errors.raise_if_any()
            record.autocomplete_choices = choices
            return None
        _check_modal(data)
        record.modal = data
        return None

    def _record_for_token(self, request: web.Request) -> InteractionRecord:
        em = self.em
        record = em.by_token.get(request.match_info["token"])
        if int(request.match_info["app_id"]) != em.application_id:
            raise ApiError(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        if record is None or em.clock.monotonic() - record.dispatched_at > TOKEN_LIFETIME_SECONDS:
            raise ApiError(401, INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")
        if record.response_type is None:
            raise ApiError(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        return record

    async def followup(self, request: web.Request) -> web.Response:
        record = self._record_for_token(request)
        body, files = await read_body(request)
        message = self.em.store.create(record.channel_id, body, files, record,
                                       allowed_flags=EPHEMERAL)
        if request.query.get("wait", "").lower() not in ("1", "true"):
            return _no_content()
        return json_response(message.payload(self.em.application_id))

    async def webhook_message(self, request: web.Request) -> web.Response:
        record = self._record_for_token(request)
        raw = request.match_info["message_id"]
        target = record.original_message_id if raw == "@original" else int(raw)
        message = self.em.messages.get(target or 0)
        if message is None or message.deleted or (
                message.interaction_id != record.id and message.id != record.original_message_id):
            raise ApiError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return await self._message_verb(request, message)

    async def _message_verb(self, request: web.Request, message: StoredMessage,
                            as_bot: bool = False) -> web.Response:
        """GET, PATCH or DELETE; ``as_bot``: by the bot's token, which needs permissions."""
        if request.method == "DELETE":
            self.em.store.delete(message)
            return _no_content()
        if request.method == "PATCH":
            body, files = await read_body(request)
            if as_bot:
                check_permissions(self.em.bot_user.permissions, creating=False,
                                  has_files=bool(files))
            self.em.store.edit(message, body, files)
        return json_response(message.payload(self.em.application_id))

    # channels

    def _channel_id(self, request: web.Request) -> int:
        channel_id = int(request.match_info["channel_id"])
        if channel_id != self.em.guild.channel_id:
            raise ApiError(404, UNKNOWN_CHANNEL, "Unknown Channel")
        return channel_id

    async def channel(self, request: web.Request) -> web.Response:
        self._channel_id(request)
        return json_response(self.em.guild.channel_payload())

    async def channel_post(self, request: web.Request) -> web.Response:
        channel_id = self._channel_id(request)
        body, files = await read_body(request)
        check_permissions(self.em.bot_user.permissions, creating=True, has_files=bool(files))
        message = self.em.store.post(channel_id, body, files)
        return json_response(message.payload(self.em.application_id))

    async def channel_message(self, request: web.Request) -> web.Response:
        channel_id = self._channel_id(request)
        message = self.em.messages.get(int(request.match_info["message_id"]))
        if message is None or message.deleted or message.ephemeral or (
                message.channel_id != channel_id):
            raise ApiError(404, UNKNOWN_MESSAGE, "Unknown Message")
        if request.method != "GET" and message.author.id != self.em.bot_user.id:
            raise ApiError(403, NOT_AUTHOR, "Cannot edit a message authored by another user")
        return await self._message_verb(request, message, as_bot=True)

    async def attachment(self, request: web.Request) -> web.Response:
        stored = self.em.store.attachments.get(int(request.match_info["attachment_id"]))
        if stored is None or stored.filename != request.match_info["filename"]:
            return web.Response(status=404, text="404: Not Found")
        content_type = stored.content_type or mimetypes.guess_type(stored.filename)[0]
        return web.Response(body=stored.data,
                            content_type=content_type or "application/octet-stream")


def _check_command(command: dict[str, Any], where: tuple[str | int, ...],
                   errors: FormErrors) -> None:
    name = command.get("name", "")
    kind = command.get("type", 1)
    if not COMMAND_NAME.match(name) or (kind in (1, None) and name != name.lower()):
        errors.add((*where, "name"), "APPLICATION_COMMAND_INVALID_NAME",
                   "Command name is invalid")
    if kind == 1 and not 1 <= len(command.get("description") or "") <= 100:
        errors.add((*where, "description"), "BASE_TYPE_BAD_LENGTH",
                   "Must be between 1 and 100 in length.")
    options = command.get("options") or []
    if len(options) > 25:
        errors.max_length((*where, "options"), 25)
    required_done = False
    for index, option in enumerate(options):
        if option.get("type") in (1, 2):
            _check_command(option | {"type": 1}, (*where, "options", index), errors)
            continue
        _check_command(option | {"type": 1, "options": []}, (*where, "options", index), errors)
        if option.get("required") and required_done:
            errors.add((*where, "options", index, "required"), "APPLICATION_COMMAND_OPTIONS_"
                       "REQUIRED_INVALID", "Required options must be placed before non-required "
                       "options")
        required_done = required_done or not option.get("required")
        if len(option.get("choices") or []) > CHOICES_MAX:
            errors.max_length((*where, "options", index, "choices"), CHOICES_MAX)


def _check_modal(data: dict[str, Any]) -> None:
    errors = FormErrors()
    if not 1 <= len(data.get("title") or "") <= 45:
        errors.add(("data", "title"), "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length.")
    components = data.get("components") or []
    if not 1 <= len(components) <= 5:
        errors.add(("data", "components"), "BASE_TYPE_BAD_LENGTH",
                   "Must be between 1 and 5 in length.")
    seen: set[str] = set()
    check_component({"custom_id": data.get("custom_id")}, ("data",), errors, seen)
    for index, component in enumerate(walk_components(components)):
        check_component(component, ("data", "components", index), errors, seen)
    errors.raise_if_any()
