"""The playground page's server API, against the emulator with a bot played by hand.

A real bot takes seconds to start, so ``HandBot`` does what any bot does, over the same wire:
it identifies on the gateway, registers commands and answers interactions over REST. What the
page sees (message JSON, who sees what, live updates) and what its endpoints make the emulator
send (typed options, clicks, modals, autocomplete) are then checked in milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from sandbox import DiscordEmulator
from sandbox.models import ALL_PERMISSIONS
from sandbox.web import Person, PlaygroundServer

# The emulator fixture runs on the module's loop (tests/support/emulator.py).
pytestmark = pytest.mark.asyncio(loop_scope="module")

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
EPHEMERAL = 64
COMMANDS: list[dict[str, Any]] = [
    {"name": "imagine", "description": "Make four images", "options": [
        {"type": 3, "name": "prompt", "description": "What to draw", "required": True},
        {"type": 3, "name": "aspect", "description": "Shape", "choices": [
            {"name": "square", "value": "1:1"}, {"name": "wide", "value": "16:9"}]},
        {"type": 4, "name": "steps", "description": "Steps", "min_value": 1, "max_value": 50},
        {"type": 5, "name": "hires", "description": "Upscale"},
        {"type": 3, "name": "model", "description": "Which model", "autocomplete": True},
        {"type": 11, "name": "image", "description": "Start from this image"}]},
    {"name": "credits", "description": "Your credits"},
    {"name": "jobs", "description": "The queue", "options": [
        {"type": 1, "name": "list", "description": "Recent jobs"}]},
    {"name": "credits-admin", "description": "Admins only", "default_member_permissions": "8",
     "options": [{"type": 1, "name": "grant", "description": "Give credits", "options": [
         {"type": 6, "name": "user", "description": "Who", "required": True},
         {"type": 4, "name": "amount", "description": "How many", "required": True}]}]},
]


class HandBot:
    """A bot by hand: gateway identify, command registration and REST answers."""

    def __init__(self, emulator: DiscordEmulator, session: aiohttp.ClientSession) -> None:
        self.em = emulator
        self.session = session
        self.interactions: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def connect(self) -> None:
        ws = await self.session.ws_connect(f"{self.em.gateway_url}?v=10&encoding=json")
        await ws.receive_json()  # HELLO
        await ws.send_json({"op": 2, "d": {"token": self.em.token, "intents": 0}})
        self._reader = asyncio.create_task(self._read(ws))
        await self.em.wait_until_ready()
        await self.rest("PUT", f"/applications/{self.em.application_id}/commands", COMMANDS)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            frame = json.loads(message.data)
            if frame.get("t") == "INTERACTION_CREATE":
                self.interactions.put_nowait(frame["d"])

    async def rest(self, method: str, path: str, body: Any = None,
                   files: dict[str, bytes] | None = None) -> Any:
        headers = {"Authorization": f"Bot {self.em.token}"}
        data: aiohttp.FormData | None = None
        if files:
            data = aiohttp.FormData()
            data.add_field("payload_json", json.dumps(body), content_type="application/json")
            for index, (name, content) in enumerate(files.items()):
                data.add_field(f"files[{index}]", content, filename=name,
                               content_type="image/png")
            body = None
        async with self.session.request(method, self.em.api_url + path, json=body, data=data,
                                        headers=headers) as response:
            assert response.status < 300, await response.text()
            return None if response.status == 204 else await response.json()

    async def answer(self, kind: int, data: dict[str, Any] | None = None,
                     files: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Answer the next interaction with callback ``kind``; returns the interaction."""
        interaction = await asyncio.wait_for(self.interactions.get(), 5)
        await self.rest("POST", f"/interactions/{interaction['id']}/{interaction['token']}"
                                "/callback", {"type": kind, "data": data or {}}, files)
        return interaction

    async def post(self, body: dict[str, Any], files: dict[str, bytes] | None = None
                   ) -> dict[str, Any]:
        result: dict[str, Any] = await self.rest(
            "POST", f"/channels/{self.em.channel_id}/messages", body, files)
        return result


class Page:
    """The page's server under test, with its people and a client."""

    def __init__(self, client: TestClient[Any, Any], people: dict[str, Person],
                 bot: HandBot) -> None:
        self.client = client
        self.people = people
        self.bot = bot

    def id(self, name: str) -> str:
        return str(self.people[name].user.id)

    async def state(self, name: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/state?user={self.id(name)}")
        assert response.status == 200
        result: dict[str, Any] = await response.json()
        return result

    async def post(self, path: str, body: Any, status: int = 200) -> Any:
        response = await self.client.post(path, json=body)
        assert response.status == status, await response.text()
        return await response.json()


@pytest_asyncio.fixture(loop_scope="module")
async def page(emulator: DiscordEmulator) -> AsyncIterator[Page]:
    people = {"alice": Person(emulator.add_user(name="alice"), "#e67e22"),
              "bob": Person(emulator.add_user(name="bob"), "#1abc9c"),
              "admin": Person(emulator.add_user(name="admin", permissions=ALL_PERMISSIONS),
                              "#e91e63", admin=True)}
    server = PlaygroundServer(emulator, list(people.values()))
    async with aiohttp.ClientSession() as session, TestClient(TestServer(server.app())) as client:
        bot = HandBot(emulator, session)
        await bot.connect()
        yield Page(client, people, bot)
        await server.close()


async def test_state_lists_people_and_the_commands_each_may_use(page: Page) -> None:
    alice, admin = await page.state("alice"), await page.state("admin")
    assert [(u["name"], u["admin"]) for u in alice["users"]] == [
        ("alice", False), ("bob", False), ("admin", True)]
    assert alice["user"] == page.id("alice") and alice["messages"] == []
    assert [c["name"] for c in alice["commands"]] == ["credits", "imagine", "jobs list"]
    grant = next(c for c in admin["commands"] if c["name"] == "credits-admin grant")
    assert [o["name"] for o in grant["options"]] == ["user", "amount"]
    by_name = await page.client.get("/api/state?user=bob")
    assert (await by_name.json())["user"] == page.id("bob")


async def test_message_json_has_embeds_attachments_and_components(page: Page) -> None:
    embed = {"title": "Result", "description": "a red fox", "color": 0x5865F2,
             "fields": [{"name": "Seed", "value": "7", "inline": True}],
             "footer": {"text": "job 1"}, "image": {"url": "attachment://grid.png"}}
    components = [{"type": 1, "components": [
        {"type": 2, "style": 1, "label": "V1", "custom_id": "v1"},
        {"type": 2, "style": 2, "emoji": {"name": "🔄"}, "custom_id": "again", "disabled": True}]},
        {"type": 1, "components": [{"type": 3, "custom_id": "pick", "options": [
            {"label": "One", "value": "1"}, {"label": "Two", "value": "2"}]}]}]
    sent = await page.bot.post({"content": "done", "embeds": [embed], "components": components},
                               {"grid.png": PNG})
    [message] = [m for m in (await page.state("bob"))["messages"] if m["id"] == sent["id"]]
    assert message["author"]["bot"] and message["content"] == "done"
    assert message["embeds"] == [embed] and message["components"] == components
    assert not (message["ephemeral"] or message["loading"] or message["edited"])
    [image] = message["attachments"]
    assert (image["filename"], image["alt"]) == ("grid.png", "a red fox")
    served = await page.client.get(image["url"])
    assert served.status == 200 and await served.read() == PNG
    assert served.content_type == "image/png"
    missing = await page.client.get(image["url"].replace("grid.png", "other.png"))
    assert missing.status == 404 and "error" in await missing.json()


async def test_slash_command_sends_typed_options_and_ephemeral_answers_stay_private(
        page: Page) -> None:
    async with page.client.ws_connect(f"/api/ws?user={page.id('alice')}") as alice_ws, \
            page.client.ws_connect(f"/api/ws?user={page.id('bob')}") as bob_ws:
        answer, interaction = await asyncio.gather(
            page.post("/api/command", {"user": page.id("alice"), "name": "/imagine",
                                       "options": {"prompt": "a fox", "aspect": "wide",
                                                   "steps": "20", "hires": "yes", "image": {
                                                       "filename": "start.png",
                                                       "data": base64.b64encode(PNG).decode()}}}),
            page.bot.answer(4, {"content": "Only for alice", "flags": EPHEMERAL}))
        assert answer["responded"] and answer["modal"] is None
        assert answer["interaction_id"] == interaction["id"]
        options = {o["name"]: o["value"] for o in interaction["data"]["options"]}
        [upload] = interaction["data"]["resolved"]["attachments"].values()
        assert options == {"prompt": "a fox", "aspect": "16:9", "steps": 20, "hires": True,
                           "image": upload["id"]}
        assert upload["filename"] == "start.png" and upload["size"] == len(PNG)
        pushed = await alice_ws.receive_json(timeout=5)
        assert (pushed["type"], pushed["event"]) == ("message", "create")
        message = pushed["message"]
        assert message["content"] == "Only for alice" and message["ephemeral"]
        assert message["interaction"]["command"] == "/imagine"
        assert message["interaction"]["user_name"] == "alice"
        public = await page.bot.post({"content": "for everyone"})
        assert (await bob_ws.receive_json(timeout=5))["message"]["id"] == public["id"]
    assert message["id"] in {m["id"] for m in (await page.state("alice"))["messages"]}
    assert message["id"] not in {m["id"] for m in (await page.state("bob"))["messages"]}


async def test_deferred_answer_then_edit_is_pushed_for_the_same_message(page: Page) -> None:
    async with page.client.ws_connect(f"/api/ws?user={page.id('bob')}") as ws:
        _, interaction = await asyncio.gather(
            page.post("/api/command", {"user": page.id("bob"), "name": "imagine",
                                       "options": {"prompt": "a cat"}}),
            page.bot.answer(5))
        thinking = (await ws.receive_json(timeout=5))["message"]
        assert thinking["loading"] and not thinking["ephemeral"]
        await page.bot.rest("PATCH", f"/webhooks/{page.bot.em.application_id}/"
                                     f"{interaction['token']}/messages/@original",
                            {"content": "step 1/4"}, {"preview.png": PNG})
        edited = await ws.receive_json(timeout=5)
        assert edited["event"] == "edit" and edited["message"]["id"] == thinking["id"]
        assert edited["message"]["content"] == "step 1/4" and not edited["message"]["loading"]
        assert edited["message"]["attachments"][0]["alt"] == "a cat"
        await page.bot.rest("DELETE", f"/webhooks/{page.bot.em.application_id}/"
                                      f"{interaction['token']}/messages/@original")
        deleted = await ws.receive_json(timeout=5)
        assert deleted["event"] == "delete" and deleted["message"]["deleted"]


async def test_click_opens_the_bots_modal_and_the_page_submits_it(page: Page) -> None:
    sent = await page.bot.post({"content": "grid", "components": [{"type": 1, "components": [
        {"type": 2, "style": 2, "label": "Remix", "custom_id": "remix"}]}]})
    modal = {"title": "Remix", "custom_id": "remix-form", "components": [
        {"type": 1, "components": [{"type": 4, "custom_id": "prompt", "label": "Prompt",
                                    "style": 2, "value": "a fox"}]}]}
    opened, click = await asyncio.gather(
        page.post("/api/click", {"user": page.id("bob"), "message_id": sent["id"],
                                 "custom_id": "remix"}),
        page.bot.answer(9, modal))
    assert click["data"] == {"custom_id": "remix", "component_type": 2}
    assert click["member"]["user"]["id"] == page.id("bob")
    assert opened["modal"]["title"] == "Remix"
    refused = await page.post("/api/modal", {"user": page.id("alice"), "interaction_id":
                                             opened["interaction_id"], "values": {}}, 403)
    assert refused == {"error": "that form was opened by another user"}
    submitted, submit = await asyncio.gather(
        page.post("/api/modal", {"user": page.id("bob"), "interaction_id":
                                 opened["interaction_id"], "values": {"prompt": "a wolf"}}),
        page.bot.answer(4, {"content": "remixing"}, {"preview.png": PNG}))
    assert submitted["responded"]
    assert submit["data"]["custom_id"] == "remix-form"
    assert submit["data"]["components"][0]["components"][0]["value"] == "a wolf"
    [remixing] = [m for m in (await page.state("bob"))["messages"]
                  if m["interaction"] and m["interaction"]["id"] == submit["id"]]
    assert remixing["attachments"][0]["alt"] == "a wolf"  # the new prompt, not the old one


async def test_select_menu_values_reach_the_bot(page: Page) -> None:
    sent = await page.bot.post({"content": "pick", "components": [{"type": 1, "components": [
        {"type": 3, "custom_id": "pick", "options": [{"label": "One", "value": "1"}]}]}]})
    _, interaction = await asyncio.gather(
        page.post("/api/click", {"user": page.id("alice"), "message_id": sent["id"],
                                 "custom_id": "pick", "values": ["1"]}),
        page.bot.answer(6))
    assert interaction["data"]["values"] == ["1"]


async def test_autocomplete_returns_the_bots_choices(page: Page) -> None:
    choices = [{"name": "demo", "value": "demo"}]
    answer, interaction = await asyncio.gather(
        page.post("/api/autocomplete", {"user": page.id("alice"), "name": "imagine",
                                        "options": {"prompt": "a fox", "model": "de"},
                                        "focused": "model"}),
        page.bot.answer(8, {"choices": choices}))
    assert answer == {"choices": choices}
    focused = [o for o in interaction["data"]["options"] if o.get("focused")]
    assert focused == [{"name": "model", "type": 3, "value": "de", "focused": True}]


async def test_subcommand_with_a_member_option_as_the_admin(page: Page) -> None:
    _, interaction = await asyncio.gather(
        page.post("/api/command", {"user": page.id("admin"), "name": "credits-admin grant",
                                   "options": {"user": "@bob", "amount": "5"}}),
        page.bot.answer(4, {"content": "granted", "flags": EPHEMERAL}))
    [grant] = interaction["data"]["options"]
    assert grant["name"] == "grant" and grant["type"] == 1
    assert {o["name"]: o["value"] for o in grant["options"]} == {
        "user": page.id("bob"), "amount": 5}
    assert page.id("bob") in interaction["data"]["resolved"]["users"]


async def test_side_panel_reads_credits_and_jobs_and_keeps_them_out_of_the_channel(
        page: Page) -> None:
    before = [len((await page.state(name))["messages"]) for name in ("alice", "admin")]

    async def bot_answers() -> list[str]:
        names = []
        for _ in range(2):
            interaction = await asyncio.wait_for(page.bot.interactions.get(), 5)
            names.append(interaction["data"]["name"])
            data: dict[str, Any] = {"content": "`j1` **queued** imagine", "flags": EPHEMERAL}
            if interaction["data"]["name"] == "credits":
                data = {"flags": EPHEMERAL, "embeds": [{"title": "Your credits", "fields": [
                    {"name": "Available", "value": "**42** credits"}]}]}
            await page.bot.rest("POST", f"/interactions/{interaction['id']}/"
                                        f"{interaction['token']}/callback",
                                {"type": 4, "data": data})
        return names

    panel, names = await asyncio.gather(page.post("/api/panel", {"user": page.id("alice")}),
                                        bot_answers())
    assert sorted(names) == ["credits", "jobs"]
    assert panel == {"balance": 42, "queue": ["`j1` **queued** imagine"]}
    assert [len((await page.state(name))["messages"]) for name in ("alice", "admin")] == before


@pytest.mark.parametrize(("path", "body", "status", "error"), [
    ("/api/command", {"user": "nobody", "name": "credits"}, 400, "no playground user"),
    ("/api/command", {"user": "alice", "name": "credits-admin grant",
                      "options": {"user": "bob", "amount": "1"}}, 400, "not a command alice"),
    ("/api/command", {"user": "alice", "name": "imagine"}, 400, "required options missing"),
    ("/api/command", {"user": "alice", "name": "imagine",
                      "options": {"prompt": "x", "steps": "many"}}, 400, "a whole number"),
    ("/api/command", {"user": "alice", "name": "imagine",
                      "options": {"prompt": "x", "steps": "99"}}, 400, "out of range"),
    ("/api/command", {"user": "alice", "name": "imagine",
                      "options": {"prompt": "x", "size": "2"}}, 400, "no option 'size'"),
    ("/api/command", {"user": "alice", "name": "imagine",
                      "options": {"prompt": "x", "hires": "maybe"}}, 400, "true or false"),
    ("/api/command", ["not", "an", "object"], 400, "JSON object"),
    ("/api/click", {"user": "alice", "message_id": "1", "custom_id": "x"}, 404, "no message"),
    ("/api/modal", {"user": "alice", "interaction_id": "1", "values": {}}, 404,
     "no interaction"),
    ("/api/autocomplete", {"user": "alice", "name": "imagine", "focused": "prompt"}, 400,
     "has no autocomplete"),
    ("/api/command", {"user": "alice", "name": "imagine",
                      "options": {"prompt": "x", "image": {"filename": "a.png", "data": "!"}}},
     400, "not valid base64"),
])
async def test_bad_requests_get_one_sentence_and_a_4xx(page: Page, path: str, body: Any,
                                                       status: int, error: str) -> None:
    answer = await page.post(path, body, status)
    assert list(answer) == ["error"] and error in answer["error"]
    assert "Traceback" not in answer["error"]
    assert page.bot.interactions.empty()


async def test_a_body_that_is_not_json_is_refused(page: Page) -> None:
    response = await page.client.post("/api/command", data=b"{", headers={
        "Content-Type": "application/json"})
    assert response.status == 400
    assert await response.json() == {"error": "the request body is not JSON"}


async def test_other_web_sites_cannot_drive_the_playground(page: Page) -> None:
    """No login, so a visitor's browser must not act for another site: no cross-site posts
    (preflight-free text/plain or a foreign Origin), no foreign websocket, no rebound name."""
    body = json.dumps({"user": page.id("admin"), "name": "credits"})
    plain = await page.client.post("/api/command", data=body,
                                   headers={"Content-Type": "text/plain"})
    assert plain.status == 415
    foreign = await page.client.post("/api/command", data=body, headers={
        "Content-Type": "application/json", "Origin": "http://evil.example"})
    assert foreign.status == 403 and "other web sites" in (await foreign.json())["error"]
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await page.client.ws_connect(f"/api/ws?user={page.id('admin')}",
                                     headers={"Origin": "http://evil.example"})
    rebound = await page.client.get(f"/api/state?user={page.id('admin')}",
                                    headers={"Host": "evil.example:8080"})
    assert rebound.status == 403
    same = await page.client.get(f"/api/state?user={page.id('admin')}", headers={
        "Origin": str(page.client.make_url("/").origin())})
    assert same.status == 200
    assert page.bot.interactions.empty()


async def test_start_serves_the_page_and_its_modules(emulator: DiscordEmulator) -> None:
    server = PlaygroundServer(emulator, [Person(emulator.add_user(name="carol"), "#123456")])
    url = await server.start("127.0.0.1", 0)
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/")
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                page = await response.text()
            assert response.status == 200 and 'aria-label="Message"' in page
            for module in ("app.js", "render.js", "commands.js", "modal.js", "markdown.js",
                           "style.css"):
                async with session.get(f"{url}static/{module}") as response:
                    assert response.status == 200, module
            async with session.ws_connect(f"{url}api/ws?user=carol") as ws:
                await asyncio.wait_for(server.close(), 5)  # an open page does not hold it up
                assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSE
    finally:
        await server.close()
    assert server._on_message not in emulator.store.listeners
