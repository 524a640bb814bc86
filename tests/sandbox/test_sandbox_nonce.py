"""Create Message with ``nonce`` and ``enforce_nonce``, as Discord documents them: a nonce the
same author used in the past few minutes returns the message created then, not a second one.

And faults that lose only the answer: the request took effect, so a retry must not repeat it.
"""

from __future__ import annotations

from typing import Any

import discord
import pytest
from discord.http import Route

from sandbox import DiscordEmulator
from sandbox.store import NONCE_WINDOW_SECONDS
from tests.support.sandbox_bot import SandboxBot

# The emulator fixture runs on the module's loop (tests/support/emulator.py).
pytestmark = pytest.mark.asyncio(loop_scope="module")


async def post(sandbox_bot: SandboxBot, emulator: DiscordEmulator, **body: Any) -> Any:
    route = Route("POST", "/channels/{channel_id}/messages", channel_id=emulator.channel_id)
    return await sandbox_bot.http.request(route, json=body)


def channel(sandbox_bot: SandboxBot, emulator: DiscordEmulator) -> discord.TextChannel:
    found = sandbox_bot.get_channel(emulator.channel_id)
    assert isinstance(found, discord.TextChannel)
    return found


async def test_an_enforced_nonce_returns_the_message_already_created(
        emulator: DiscordEmulator, sandbox_bot: SandboxBot) -> None:
    first = await post(sandbox_bot, emulator, content="one", nonce="job-1", enforce_nonce=True)
    again = await post(sandbox_bot, emulator, content="two", nonce="job-1", enforce_nonce=True)
    assert again["id"] == first["id"] and again["content"] == "one"
    assert first["nonce"] == "job-1"
    other = await post(sandbox_bot, emulator, content="three", nonce="job-2", enforce_nonce=True)
    assert other["id"] != first["id"]
    assert [m.content for m in emulator.messages.values()] == ["one", "three"]


async def test_a_nonce_without_enforce_nonce_is_only_echoed(emulator: DiscordEmulator,
                                                            sandbox_bot: SandboxBot) -> None:
    first = await post(sandbox_bot, emulator, content="one", nonce=17)
    second = await post(sandbox_bot, emulator, content="two", nonce=17)
    assert first["id"] != second["id"] and first["nonce"] == 17
    # Enforced later, it finds the author's messages with that nonce, enforced or not.
    third = await post(sandbox_bot, emulator, content="three", nonce=17, enforce_nonce=True)
    assert third["id"] in (first["id"], second["id"]) and len(emulator.messages) == 2


async def test_the_nonce_is_forgotten_after_the_window(emulator: DiscordEmulator,
                                                       sandbox_bot: SandboxBot) -> None:
    first = await post(sandbox_bot, emulator, content="one", nonce="n", enforce_nonce=True)
    emulator.clock.advance(NONCE_WINDOW_SECONDS - 1)
    assert (await post(sandbox_bot, emulator, content="x", nonce="n",
                       enforce_nonce=True))["id"] == first["id"]
    emulator.clock.advance(1)
    later = await post(sandbox_bot, emulator, content="two", nonce="n", enforce_nonce=True)
    assert later["id"] != first["id"] and len(emulator.messages) == 2


async def test_the_nonce_of_a_deleted_message_is_unknown_message(
        emulator: DiscordEmulator, sandbox_bot: SandboxBot) -> None:
    sent = await channel(sandbox_bot, emulator).send("gone soon", nonce="deleted")
    await sent.delete()
    with pytest.raises(discord.NotFound) as gone:
        await channel(sandbox_bot, emulator).send("again", nonce="deleted")
    assert gone.value.code == 10008
    assert len(emulator.messages) == 1


async def test_nonces_are_integers_or_strings_of_at_most_25(emulator: DiscordEmulator,
                                                            sandbox_bot: SandboxBot) -> None:
    for nonce in ("x" * 26, ["list"], 1.5):
        with pytest.raises(discord.HTTPException) as rejected:
            await post(sandbox_bot, emulator, content="hi", nonce=nonce)
        assert (rejected.value.status, rejected.value.code) == (400, 50035)
    assert not emulator.messages
    sent = await post(sandbox_bot, emulator, content="hi", nonce="x" * 25)
    assert int(sent["id"]) in emulator.messages


async def test_discord_py_enforces_the_nonce_it_is_given(emulator: DiscordEmulator,
                                                         sandbox_bot: SandboxBot) -> None:
    target = channel(sandbox_bot, emulator)
    first = await target.send("result", nonce="r0123456789abcdef01234567")
    again = await target.send("result", nonce="r0123456789abcdef01234567")
    assert again.id == first.id and again.nonce == "r0123456789abcdef01234567"
    assert len(emulator.messages) == 1
    assert (await target.send("result")).id != first.id  # its own random nonce otherwise


async def test_a_lost_answer_before_the_api_acts_is_retried_as_new(
        emulator: DiscordEmulator, sandbox_bot: SandboxBot) -> None:
    emulator.fail_next("POST", "/channels/*/messages", status=503)
    with pytest.raises(discord.DiscordServerError):  # 503 is not retried by discord.py
        await channel(sandbox_bot, emulator).send("never made")
    assert not emulator.messages


async def test_a_lost_answer_after_the_api_acted_leaves_the_message(
        emulator: DiscordEmulator, sandbox_bot: SandboxBot) -> None:
    emulator.fail_next("POST", "/channels/*/messages", status=503, after=True)
    with pytest.raises(discord.DiscordServerError):
        await channel(sandbox_bot, emulator).send("made", nonce="lost")
    [made] = emulator.messages.values()
    assert made.content == "made"
    # Sent again by whoever gave up, with the same nonce: the same message, not a second.
    assert (await channel(sandbox_bot, emulator).send("made", nonce="lost")).id == made.id
    assert len(emulator.messages) == 1


@pytest.mark.slow  # discord.py waits a second before it retries a 5xx
async def test_discord_py_retrying_a_post_whose_answer_was_lost_makes_one_message(
        emulator: DiscordEmulator, sandbox_bot: SandboxBot) -> None:
    emulator.fail_next("POST", "/channels/*/messages", status=502, after=True)
    sent = await channel(sandbox_bot, emulator).send("once")
    assert emulator.faults.injected == 1
    assert [m.id for m in emulator.messages.values()] == [sent.id]
