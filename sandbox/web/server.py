"""The playground's HTTP side: one page, a JSON API and a websocket, over a DiscordEmulator.

Every action goes through the emulator's own user-side methods (``slash``, ``autocomplete``,
``click``, ``submit_modal``), so the bot meets exactly the interactions Discord would send; the
server adds only what a Discord client shows: the channel, who may see what, and live updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import mimetypes
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from yarl import URL

from sandbox.emulator import DiscordEmulator
from sandbox.errors import EmulatorError
from sandbox.models import InteractionRecord, StoredMessage
from sandbox.rest import FIRST_RESPONSE_SECONDS
from sandbox.web.typed import convert_options
from sandbox.web.views import Person, commands_json, message_json, visible_to

_log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: How long the side panel waits for the bot to answer its background /credits and /jobs.
PANEL_SECONDS = 5.0
BALANCE = re.compile(r"(-?\d+)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BadRequest(Exception):
    """A request the page should not have sent; its message is the one-sentence answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Watcher:
    """One open websocket: the user it shows, and its messages queued in order."""

    def __init__(self, user_id: int, ws: web.WebSocketResponse) -> None:
        self.user_id = user_id
        self.ws = ws
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()


class PlaygroundServer:
    """The page and its API for ``people`` on ``emulator``; ``start()`` listens on host:port
    (port 0: a free one) and sets ``url``."""

    def __init__(self, emulator: DiscordEmulator, people: Sequence[Person]) -> None:
        self.emulator = emulator
        self.people = {person.user.id: person for person in people}
        #: Interactions the side panel ran; their answers stay out of the channel.
        self.background: set[int] = set()
        self._watchers: set[_Watcher] = set()
        self._runner: web.AppRunner | None = None
        #: Served on loopback: requests must name a loopback host (see _check_origin).
        self.loopback = True
        self.url = ""
        emulator.store.listeners.append(self._on_message)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.add_routes([
            web.get("/", self.index),
            web.static("/static", STATIC),
            web.get("/api/state", self.state),
            web.get("/api/ws", self.websocket),
            web.get("/api/attachments/{attachment_id:\\d+}/{filename}", self.attachment),
            web.post("/api/command", self.command),
            web.post("/api/autocomplete", self.autocomplete),
            web.post("/api/click", self.click),
            web.post("/api/modal", self.modal),
            web.post("/api/panel", self.panel),
        ])
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.loopback = is_loopback(host)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0][1]
        shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # any address: this one too
        shown = f"[{shown}]" if ":" in shown else shown
        self.url = f"http://{shown}:{bound}/"
        return self.url

    async def close(self) -> None:
        """Stop listening; open pages are told "going away" first, or the server would wait
        up to a minute for their websockets to end."""
        with contextlib.suppress(ValueError):
            self.emulator.store.listeners.remove(self._on_message)
        for watcher in list(self._watchers):
            await watcher.ws.close(code=WSCloseCode.GOING_AWAY)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # errors

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A bad request is one sentence of JSON with a 4xx status, never a traceback."""
        try:
            self._check_origin(request)
            return await handler(request)
        except web.HTTPException:
            raise
        except BadRequest as error:
            return web.json_response({"error": str(error)}, status=error.status)
        except EmulatorError as error:
            return web.json_response({"error": str(error)}, status=400)
        except Exception:
            _log.exception("playground request %s %s failed", request.method, request.path)
            return web.json_response({"error": "The playground failed to handle this request; "
                                               "see its log."}, status=500)

    def _check_origin(self, request: web.Request) -> None:
        """Other web sites must not drive the playground from a visitor's browser: the page
        has no login. A page elsewhere can neither post here nor open the websocket (Origin),
        nor reach a loopback playground through a name that it controls (Host, against DNS
        rebinding)."""
        if self.loopback and not is_loopback(URL(f"http://{request.host}").host or ""):
            raise BadRequest("this playground answers only on its loopback address", 403)
        origin = request.headers.get("Origin")
        if origin is not None and URL(origin).origin() != URL(
                f"{request.scheme}://{request.host}").origin():
            raise BadRequest("requests from other web sites are refused", 403)

    # reading requests

    def _person(self, raw: Any) -> Person:
        """A playground user by id, or by name (``?user=bob`` in a link)."""
        person = next((p for p in self.people.values()
                       if str(raw) in (str(p.user.id), p.user.name)), None)
        if person is None:
            raise BadRequest(f"there is no playground user {raw!r}")
        return person

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise BadRequest("send the body as application/json", 415)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    @staticmethod
    def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
        value = body.get(name)
        if not isinstance(value, kind):
            raise BadRequest(f"{name!r} is missing or has the wrong type")
        return value

    def _leaf(self, person: Person, name: str) -> dict[str, Any]:
        """The command (``group sub`` path) as this user's client lists it."""
        commands = {c["name"]: c for c in commands_json(self.emulator, person.user)}
        command = commands.get(" ".join(name.strip().removeprefix("/").split()))
        if command is None:
            raise BadRequest(f"/{name} is not a command {person.user.name} can use")
        return command

    # the page

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def state(self, request: web.Request) -> web.Response:
        person = self._person(request.query.get("user"))
        em = self.emulator
        messages = [message_json(em, m) for m in sorted(em.messages.values(), key=lambda m: m.id)
                    if self._shown(m, person.user.id)]
        return web.json_response({
            "users": [p.payload() for p in self.people.values()],
            "user": str(person.user.id),
            "bot": {"id": str(em.bot_user.id), "name": em.bot_user.name},
            "guild": {"name": em.guild.name}, "channel": {"name": em.guild.channel_name},
            "commands": commands_json(em, person.user), "messages": messages})

    def _shown(self, message: StoredMessage, user_id: int) -> bool:
        return (not message.deleted and message.interaction_id not in self.background
                and visible_to(self.emulator, message, user_id))

    async def attachment(self, request: web.Request) -> web.Response:
        """Attachment bytes from the page's own origin, so the emulator can stay on loopback."""
        stored = self.emulator.store.attachments.get(int(request.match_info["attachment_id"]))
        if stored is None or stored.filename != request.match_info["filename"]:
            raise BadRequest("no such attachment", 404)
        kind = stored.content_type or mimetypes.guess_type(stored.filename)[0]
        return web.Response(body=stored.data, content_type=kind or "application/octet-stream")

    # live updates

    def _on_message(self, message: StoredMessage, event: str) -> None:
        if message.interaction_id in self.background:
            return
        payload: dict[str, Any] | None = None
        for watcher in self._watchers:
            if visible_to(self.emulator, message, watcher.user_id):
                payload = payload or {"type": "message", "event": event,
                                      "message": message_json(self.emulator, message)}
                watcher.queue.put_nowait(payload)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        person = self._person(request.query.get("user"))
        ws = web.WebSocketResponse(heartbeat=30)
        watcher = _Watcher(person.user.id, ws)
        self._watchers.add(watcher)  # before the handshake, so nothing after it is missed
        try:
            await ws.prepare(request)
        except BaseException:
            self._watchers.discard(watcher)
            raise

        async def write() -> None:
            while True:
                await ws.send_json(await watcher.queue.get())

        writer = asyncio.create_task(write())
        try:
            async for message in ws:
                if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self._watchers.discard(watcher)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await writer
        return ws

    # interactions

    async def command(self, request: web.Request) -> web.Response:
        """POST {user, name, options}: run a slash command as the user."""
        body = await self._body(request)
        person = self._person(body.get("user"))
        name = self._field(body, "name", str)
        command = self._leaf(person, name)
        options = convert_options(command["options"], self._field(body, "options", dict)
                                  if "options" in body else {}, self._members())
        record = await self.emulator.slash(person.user, command["name"], options)
        return web.json_response(await self._answer(record))

    async def autocomplete(self, request: web.Request) -> web.Response:
        """POST {user, name, options, focused}: the bot's choices for the focused option."""
        body = await self._body(request)
        person = self._person(body.get("user"))
        command = self._leaf(person, self._field(body, "name", str))
        focused = self._field(body, "focused", str)
        given = dict(self._field(body, "options", dict) if "options" in body else {})
        given.setdefault(focused, "")
        options = convert_options(command["options"], given, self._members(), focused)
        try:
            choices = await self.emulator.autocomplete(person.user, command["name"], options,
                                                       focused, timeout=FIRST_RESPONSE_SECONDS)
        except TimeoutError:
            raise BadRequest("the bot did not answer the autocomplete in time", 504) from None
        return web.json_response({"choices": choices})

    async def click(self, request: web.Request) -> web.Response:
        """POST {user, message_id, custom_id, values?}: press a button or pick in a select."""
        body = await self._body(request)
        person = self._person(body.get("user"))
        message = self._visible_message(body.get("message_id"), person)
        values = body.get("values")
        if values is not None and not (isinstance(values, list)
                                       and all(isinstance(v, str) for v in values)):
            raise BadRequest("'values' must be a list of strings")
        record = await self.emulator.click(person.user, message.id,
                                           self._field(body, "custom_id", str), values)
        return web.json_response(await self._answer(record))

    async def modal(self, request: web.Request) -> web.Response:
        """POST {user, interaction_id, values}: submit the modal that interaction opened."""
        body = await self._body(request)
        person = self._person(body.get("user"))
        opened = self._interaction(body.get("interaction_id"))
        if opened.user.id != person.user.id:
            raise BadRequest("that form was opened by another user", 403)
        values = self._field(body, "values", dict)
        if not all(isinstance(v, str) for v in values.values()):
            raise BadRequest("modal values must be strings")
        record = await self.emulator.submit_modal(person.user, opened, values)
        return web.json_response(await self._answer(record))

    def _members(self) -> list[Any]:
        return list(self.emulator.guild.members.values())

    def _visible_message(self, raw: Any, person: Person) -> StoredMessage:
        try:
            message = self.emulator.messages.get(int(raw))
        except (TypeError, ValueError):
            message = None
        if message is None or not self._shown(message, person.user.id):
            raise BadRequest(f"there is no message {raw!r}", 404)
        return message

    def _interaction(self, raw: Any) -> InteractionRecord:
        try:
            record = self.emulator.interactions.get(int(raw))
        except (TypeError, ValueError):
            record = None
        if record is None:
            raise BadRequest(f"there is no interaction {raw!r}", 404)
        return record

    @staticmethod
    async def _answer(record: InteractionRecord) -> dict[str, Any]:
        """The interaction, and the modal if the bot answered with one; ``responded`` is false
        when the bot missed Discord's 3-second deadline ("The application did not respond")."""
        try:
            await record.wait_for_response(FIRST_RESPONSE_SECONDS + 0.5)
        except TimeoutError:
            return {"interaction_id": str(record.id), "responded": False, "modal": None}
        return {"interaction_id": str(record.id), "responded": True, "modal": record.modal}

    # the side panel

    async def panel(self, request: web.Request) -> web.Response:
        """POST {user}: the user's balance from their own /credits, and the queue from the
        admin's /jobs list, both run in the background as those users would."""
        person = self._person((await self._body(request)).get("user"))
        credits, jobs = await asyncio.gather(
            self._quietly(person, "credits"),
            self._quietly(next((p for p in self.people.values() if p.admin), None), "jobs list"))
        return web.json_response({"balance": _balance(credits),
                                  "queue": None if jobs is None else jobs.content.splitlines()})

    async def _quietly(self, person: Person | None, name: str) -> StoredMessage | None:
        """The first answer to ``/name`` run as ``person``, kept out of the channel."""
        if person is None or self.emulator.gateway.session is None:
            return None
        try:
            self._leaf(person, name)
        except BadRequest:
            return None
        record = await self.emulator.slash(person.user, name)
        self.background.add(record.id)
        try:
            return await self.emulator.wait_for_message(
                lambda m: m.interaction_id == record.id and bool(m.content or m.embeds),
                PANEL_SECONDS)
        except TimeoutError:
            return None


def _balance(message: StoredMessage | None) -> int | None:
    """The number in /credits' "Available" field (``**12** credits``)."""
    if message is None:
        return None
    for embed in message.embeds:
        for field in embed.get("fields") or []:
            if field.get("name") == "Available" and (found := BALANCE.search(field["value"])):
                return int(found.group(1))
    return None
