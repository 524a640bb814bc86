"""Each rule Discord enforces, rejected by the emulator and seen through discord.py's client."""

from __future__ import annotations

import io
import time
from typing import Any

import aiohttp
import discord
import pytest
from discord.http import Route

from sandbox import DiscordEmulator
from sandbox.limits import ATTACH_FILES, SEND_MESSAGES
from sandbox.models import ALL_PERMISSIONS
from tests.support.sandbox_bot import SandboxBot, run_action

# The emulator fixture runs on the module's loop (tests/support/emulator.py).
pytestmark = pytest.mark.asyncio(loop_scope="module")


def button(custom_id: str, label: str = "go") -> dict[str, Any]:
    return {"type": 2, "style": 1, "label": label, "custom_id": custom_id}


def rows(count: int, per_row: int) -> list[dict[str, Any]]:
    return [{"type": 1, "components": [button(f"b{r}-{b}") for b in range(per_row)]}
            for r in range(count)]


def embed(**fields: Any) -> dict[str, Any]:
    return {"title": "t"} | fields


REJECTED: dict[str, dict[str, Any]] = {
    "content over 2000": {"content": "x" * 2001},
    "11 embeds": {"embeds": [embed() for _ in range(11)]},
    "title over 256": {"embeds": [embed(title="x" * 257)]},
    "description over 4096": {"embeds": [embed(description="x" * 4097)]},
    "26 fields": {"embeds": [embed(fields=[{"name": "n", "value": "v"}] * 26)]},
    "field name over 256": {"embeds": [embed(fields=[{"name": "x" * 257, "value": "v"}])]},
    "field value over 1024": {"embeds": [embed(fields=[{"name": "n", "value": "x" * 1025}])]},
    "footer over 2048": {"embeds": [embed(footer={"text": "x" * 2049})]},
    "author over 256": {"embeds": [embed(author={"name": "x" * 257})]},
    "embeds over 6000 in total": {"embeds": [embed(description="x" * 4000)] * 2},
    "6 rows": {"components": rows(6, 1)},
    "6 buttons in a row": {"components": rows(1, 6)},
    "duplicate custom_id": {"components": [{"type": 1, "components": [button("a"),
                                                                        button("a")]}]},
    "custom_id over 100": {"components": [{"type": 1, "components": [button("x" * 101)]}]},
    "empty custom_id": {"components": [{"type": 1, "components": [button("")]}]},
    "label over 80": {"components": [{"type": 1, "components": [button("a", "x" * 81)]}]},
}
ACCEPTED: dict[str, dict[str, Any]] = {
    "content of 2000": {"content": "x" * 2000},
    "10 embeds within 6000": {"embeds": [embed(description="x" * 590) for _ in range(10)]},
    "5 rows of 5": {"components": rows(5, 5)},
    "label of 80 and custom_id of 100": {"components": [{"type": 1, "components": [
        button("x" * 100, "y" * 80)]}]},
}


async def post(sandbox_bot: SandboxBot, emulator: DiscordEmulator, body: dict[str, Any]) -> Any:
    route = Route("POST", "/channels/{channel_id}/messages", channel_id=emulator.channel_id)
    return await sandbox_bot.http.request(route, json=body)


@pytest.mark.parametrize("case", sorted(REJECTED))
async def test_discord_rejects(case: str, emulator: DiscordEmulator,
                               sandbox_bot: SandboxBot) -> None:
    with pytest.raises(discord.HTTPException) as rejected:
        await post(sandbox_bot, emulator, REJECTED[case])
    assert (rejected.value.status, rejected.value.code) == (400, 50035)
    assert not emulator.messages


@pytest.mark.parametrize("case", sorted(ACCEPTED))
async def test_discord_accepts_the_limit_itself(case: str, emulator: DiscordEmulator,
                                                sandbox_bot: SandboxBot) -> None:
    sent = await post(sandbox_bot, emulator, ACCEPTED[case])
    assert int(sent["id"]) in emulator.messages


async def test_empty_message_and_unknown_channel(emulator: DiscordEmulator,
                                                 sandbox_bot: SandboxBot) -> None:
    with pytest.raises(discord.HTTPException) as empty:
        await post(sandbox_bot, emulator, {"content": ""})
    assert empty.value.code == 50006
    with pytest.raises(discord.NotFound) as unknown:
        await sandbox_bot.http.request(
            Route("POST", "/channels/{channel_id}/messages", channel_id=1), json={"content": "hi"})
    assert unknown.value.code == 10003


async def test_upload_over_the_guild_limit_is_413(emulator: DiscordEmulator,
                                                  sandbox_bot: SandboxBot) -> None:
    channel = sandbox_bot.get_channel(emulator.channel_id)
    assert isinstance(channel, discord.TextChannel)
    emulator.set_upload_limit(1000)
    with pytest.raises(discord.HTTPException) as too_big:
        await channel.send(file=discord.File(io.BytesIO(b"x" * 1001), "big.png"))
    assert (too_big.value.status, too_big.value.code) == (413, 40005)
    sent = await channel.send(file=discord.File(io.BytesIO(b"x" * 1000), "ok.png"))
    assert await sent.attachments[0].read() == b"x" * 1000
    edited = await sent.edit(content="kept", attachments=[])
    assert edited.attachments == [] and emulator.messages[sent.id].history[0].attachments


async def test_the_bots_own_messages_need_send_messages_and_attach_files(
        emulator: DiscordEmulator, sandbox_bot: SandboxBot) -> None:
    channel = sandbox_bot.get_channel(emulator.channel_id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("before")
    emulator.set_bot_permissions(ALL_PERMISSIONS & ~SEND_MESSAGES & ~ATTACH_FILES)
    for attempt in (channel.send("hi"), sent.edit(attachments=[discord.File(
            io.BytesIO(b"x"), "x.png")])):
        with pytest.raises(discord.Forbidden) as refused:
            await attempt
        assert refused.value.code == 50013
    assert (await sent.edit(content="edited")).content == "edited"  # no new file: allowed
    seen: list[discord.Permissions] = []

    async def look(interaction: discord.Interaction) -> None:
        seen.append(interaction.app_permissions)
        await interaction.response.send_message("ok")  # a response needs no permission

    await run_action(emulator, sandbox_bot, look)
    assert seen[0].value == ALL_PERMISSIONS & ~SEND_MESSAGES & ~ATTACH_FILES
    assert sandbox_bot.errors == []


async def test_rate_limit_429_and_discord_py_retries(emulator: DiscordEmulator,
                                                     sandbox_bot: SandboxBot) -> None:
    channel = sandbox_bot.get_channel(emulator.channel_id)
    assert isinstance(channel, discord.TextChannel)
    emulator.set_rate_limit(2, per=0.5)
    url = f"{emulator.api_url}/channels/{emulator.channel_id}/messages"
    headers = {"Authorization": f"Bot {emulator.token}"}
    async with aiohttp.ClientSession() as session:  # another process spends the bucket
        for _ in range(2):
            async with session.post(url, json={"content": "spend"}, headers=headers) as resp:
                assert resp.status == 200
        async with session.post(url, json={"content": "over"}, headers=headers) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "1"
            assert resp.headers["X-RateLimit-Remaining"] == "0"
            assert {"X-RateLimit-Bucket", "X-RateLimit-Reset", "X-RateLimit-Reset-After",
                    "X-RateLimit-Scope", "X-RateLimit-Limit"} <= set(resp.headers)
            assert 0 < (await resp.json())["retry_after"] <= 0.5
    started = time.monotonic()
    sent = await channel.send("after waiting")
    assert sent.content == "after waiting" and time.monotonic() - started < 2
    assert emulator.rate_limiter.rejected >= 2


async def test_rate_limits_can_be_switched_off(emulator: DiscordEmulator,
                                               sandbox_bot: SandboxBot) -> None:
    emulator.set_rate_limit(None)
    async with aiohttp.ClientSession() as session:
        for _ in range(60):
            async with session.get(f"{emulator.api_url}/users/@me", headers={
                    "Authorization": f"Bot {emulator.token}"}) as resp:
                assert resp.status == 200 and "X-RateLimit-Limit" not in resp.headers
    assert emulator.rate_limiter.rejected == 0


# discord.py waits seconds before it retries a 5xx.
@pytest.mark.parametrize("status", [pytest.param(502, marks=pytest.mark.slow), 429])
async def test_injected_faults_are_retried_by_discord_py(emulator: DiscordEmulator,
                                                         sandbox_bot: SandboxBot,
                                                         status: int) -> None:
    channel = sandbox_bot.get_channel(emulator.channel_id)
    assert isinstance(channel, discord.TextChannel)
    emulator.fail_next("POST", "/channels/*/messages", count=2, status=status)
    sent = await channel.send("survived")
    assert emulator.messages[sent.id].content == "survived"
    assert emulator.faults.injected == 2


async def test_an_injected_503_on_a_get_is_not_retried(emulator: DiscordEmulator,
                                                       sandbox_bot: SandboxBot) -> None:
    channel = sandbox_bot.get_channel(emulator.channel_id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("survived")
    emulator.fail_next("GET", "/channels/*/messages/*", count=1, status=503)
    with pytest.raises(discord.DiscordServerError) as failed:
        await channel.fetch_message(sent.id)
    assert failed.value.status == 503
    assert (await channel.fetch_message(sent.id)).content == "survived"


async def test_error_bodies_use_discords_shape(emulator: DiscordEmulator,
                                               sandbox_bot: SandboxBot) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{emulator.api_url}/users/@me") as resp:
            assert resp.status == 401 and resp.headers["Content-Type"] == "application/json"
            assert await resp.json() == {"code": 0, "message": "401: Unauthorized"}
        url = f"{emulator.api_url}/channels/{emulator.channel_id}/messages"
        async with session.post(url, json={"content": "x" * 2001},
                                headers={"Authorization": f"Bot {emulator.token}"}) as resp:
            body = await resp.json()
    assert body["code"] == 50035 and body["message"] == "Invalid Form Body"
    assert body["errors"]["content"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"
    assert emulator.gateway.compression == "zlib-stream"
