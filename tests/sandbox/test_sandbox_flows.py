"""The real discord.py client against the emulator: login, sync, interactions, files, resume."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import discord
import pytest

from sandbox import DiscordEmulator, EmulatorError
from tests.support.sandbox_bot import CounterButton, Form, SandboxBot, run_action

# The emulator fixture runs on the module's loop (tests/support/emulator.py).
pytestmark = pytest.mark.asyncio(loop_scope="module")

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


async def test_login_sync_defer_followup_file_and_read_back(emulator: DiscordEmulator,
                                                            sandbox_bot: SandboxBot) -> None:
    assert {"run", "pick"} <= set(emulator.registered[None])
    assert sandbox_bot.application_id == emulator.application_id
    read_back: list[bytes] = []

    async def action(interaction: discord.Interaction) -> None:
        assert interaction.filesize_limit == 10 * 1024 * 1024
        await interaction.response.defer(thinking=True)
        sent = await interaction.followup.send("image", file=discord.File(io.BytesIO(PNG), "a.png"),
                                               wait=True)
        read_back.append(await sent.attachments[0].read())
        await interaction.edit_original_response(content="done")

    record = await run_action(emulator, sandbox_bot, action)
    assert sandbox_bot.errors == []
    assert read_back == [PNG]
    original = emulator.messages[record.original_message_id]
    assert [rev.content for rev in original.history] == ["", "done"]
    assert original.history[0].flags & 128 and not original.flags & 128
    image = await emulator.wait_for_message(lambda m: m.content == "image")
    assert image.attachments[0].data == PNG and image.attachments[0].filename == "a.png"
    assert [m.content for m in emulator.messages_of(record)] == ["done", "image"]
    assert record.response_type == 5 and 0 <= record.response_latency < 3
    assert emulator.response_latencies() == [record.response_latency]


async def test_ephemeral_messages_and_snowflake_ages(emulator: DiscordEmulator,
                                                     sandbox_bot: SandboxBot) -> None:
    ages: list[float] = []

    async def action(interaction: discord.Interaction) -> None:
        ages.append((discord.utils.utcnow() - interaction.user.created_at).days)
        await interaction.response.send_message("secret", ephemeral=True)

    await run_action(emulator, sandbox_bot, action)
    message = await emulator.wait_for_message(lambda m: m.content == "secret")
    assert message.ephemeral and ages == [365]


async def test_first_response_after_three_seconds_is_unknown_interaction(
        emulator: DiscordEmulator, sandbox_bot: SandboxBot) -> None:
    gate = asyncio.Event()

    async def action(interaction: discord.Interaction) -> None:
        await gate.wait()
        await interaction.response.send_message("late")

    sandbox_bot.action = action
    sandbox_bot.finished.clear()
    record = await emulator.slash(emulator.add_user(name="bob"), "run")
    await asyncio.sleep(0.2)
    emulator.clock.advance(3.5)
    gate.set()
    await asyncio.wait_for(sandbox_bot.finished.wait(), 5)
    assert [e.code for e in sandbox_bot.errors] == [10062]
    assert record.response_type is None and record.rejections == [10062]
    assert emulator.unanswered() == [record]


async def test_second_initial_response_is_already_acknowledged(emulator: DiscordEmulator,
                                                               sandbox_bot: SandboxBot) -> None:
    async def action(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("first")
        interaction.response._response_type = None  # get past discord.py's own guard
        await interaction.response.send_message("second")

    await run_action(emulator, sandbox_bot, action)
    assert [e.code for e in sandbox_bot.errors] == [40060]


async def test_token_expires_after_fifteen_minutes(emulator: DiscordEmulator,
                                                   sandbox_bot: SandboxBot) -> None:
    gate = asyncio.Event()

    async def action(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.followup.send("in time")
        await gate.wait()
        await interaction.followup.send("too late")

    sandbox_bot.action = action
    sandbox_bot.finished.clear()
    await emulator.slash(emulator.add_user(name="carol"), "run")
    await emulator.wait_for_message(lambda m: m.content == "in time")
    emulator.clock.advance(15 * 60 + 1)
    gate.set()
    await asyncio.wait_for(sandbox_bot.finished.wait(), 5)
    assert [(e.status, e.code) for e in sandbox_bot.errors] == [(401, 50027)]


async def test_rejected_response_leaves_interaction_open(emulator: DiscordEmulator,
                                                         sandbox_bot: SandboxBot) -> None:
    async def action(interaction: discord.Interaction) -> None:
        try:
            await interaction.response.send_message("x" * 2001)
        except discord.HTTPException as error:
            sandbox_bot.errors.append(error)
            interaction.response._response_type = None
        await interaction.response.send_message("x" * 2000)

    record = await run_action(emulator, sandbox_bot, action)
    assert [(e.status, e.code) for e in sandbox_bot.errors] == [(400, 50035)]
    assert "content" in str(sandbox_bot.errors[0]) and record.response_type == 4


async def test_dynamic_item_button_click_edits_the_message(emulator: DiscordEmulator,
                                                           sandbox_bot: SandboxBot) -> None:
    async def action(interaction: discord.Interaction) -> None:
        view = discord.ui.View()
        view.add_item(CounterButton(0))
        await interaction.response.send_message("count 0", view=view)

    record = await run_action(emulator, sandbox_bot, action)
    user = emulator.add_user(name="dave")
    with pytest.raises(EmulatorError, match="no component"):
        await emulator.click(user, record.original_message_id, "count:7")
    click = await emulator.click(user, record.original_message_id, "count:0")
    assert await click.wait_for_response() == 7
    message = await emulator.wait_for_message(lambda m: m.content == "count 1")
    assert message.custom_ids() == ["count:1"] and len(message.history) == 2
    second = await emulator.click(user, message.id, "count:1")
    await second.wait_for_response()
    assert message.content == "count 2"


async def test_autocomplete_returns_the_bots_choices(emulator: DiscordEmulator,
                                                     sandbox_bot: SandboxBot) -> None:
    user = emulator.add_user(name="erin")
    choices = await emulator.autocomplete(user, "pick", {"flavour": "ch"}, focused="flavour")
    assert [c["value"] for c in choices] == ["cherry", "chocolate"]
    await emulator.slash(user, "pick", {"flavour": "vanilla", "scoops": 2})
    await emulator.wait_for_message(lambda m: m.content == "2 vanilla")
    with pytest.raises(EmulatorError, match="never registered"):
        await emulator.slash(user, "nope")
    with pytest.raises(EmulatorError, match="no option"):
        await emulator.slash(user, "pick", {"flavor": "x"})
    with pytest.raises(EmulatorError, match="cannot take"):
        await emulator.slash(user, "pick", {"flavour": "x", "scoops": "two"})
    with pytest.raises(EmulatorError, match="required"):
        await emulator.slash(user, "pick", {"scoops": 2})


async def test_modal_submit(emulator: DiscordEmulator, sandbox_bot: SandboxBot) -> None:
    async def action(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(Form())

    user = emulator.add_user(name="fay")
    record = await run_action(emulator, sandbox_bot, action, user)
    assert record.response_type == 9
    with pytest.raises(EmulatorError, match="no inputs"):
        await emulator.submit_modal(user, record, {"other": "x"})
    await emulator.submit_modal(user, record, {"prompt": "a red fox"})
    await emulator.wait_for_message(lambda m: m.content == "got a red fox")


async def test_gateway_drop_resumes_and_replays_missed_events(emulator: DiscordEmulator,
                                                              sandbox_bot: SandboxBot) -> None:
    user = emulator.add_user(name="gus")
    await emulator.disconnect_gateway()
    record = await emulator.slash(user, "pick", {"flavour": "cherry"})  # sent while down
    await record.wait_for_response(10)
    await emulator.wait_for_message(lambda m: m.content == "1 cherry")
    assert emulator.gateway.identifies == 1 and emulator.gateway.resumes == 1


async def test_wrong_token_fails_rest_login_and_gateway_identify(
        emulator: DiscordEmulator) -> None:
    client = SandboxBot()
    with pytest.raises(discord.LoginFailure):
        await client.login("wrong-token")
    await client.close()
    client = SandboxBot()
    await client.login(emulator.token)
    client.http.token = "wrong-token"
    with pytest.raises(discord.ConnectionClosed) as closed:
        await client.connect(reconnect=False)
    assert closed.value.code == 4004
    await client.close()


async def test_attachment_option_subcommand_and_guild_sync(emulator: DiscordEmulator,
                                                           sandbox_bot: SandboxBot) -> None:
    user = emulator.add_user(name="hal")
    await emulator.slash(user, "measure", {"image": ("in.png", PNG)})
    await emulator.wait_for_message(lambda m: m.content == f"in.png has {len(PNG)} bytes")
    other = emulator.add_user(name="ivy")
    await emulator.slash(user, "credits balance", {"who": other})
    balance = await emulator.wait_for_message(lambda m: m.content == "ivy has 5")
    assert balance.ephemeral
    with pytest.raises(EmulatorError, match="needs a subcommand"):
        await emulator.slash(user, "credits")
    guild = discord.Object(emulator.guild.id)
    sandbox_bot.tree.copy_global_to(guild=guild)
    synced = await sandbox_bot.tree.sync(guild=guild)
    assert {c.name for c in synced} == set(emulator.registered[emulator.guild.id])
    assert ("PUT", f"/applications/{emulator.application_id}/guilds/{emulator.guild.id}"
            "/commands", 200) in emulator.requests


async def test_deferred_update_then_edit_original_edits_the_clicked_message(
        emulator: DiscordEmulator, sandbox_bot: SandboxBot) -> None:
    class Confirm(discord.ui.View):
        @discord.ui.button(label="Confirm", custom_id="confirm")
        async def confirm(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
            await interaction.response.defer()
            await interaction.edit_original_response(content="confirmed", view=None)

    async def action(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("sure?", view=Confirm())

    record = await run_action(emulator, sandbox_bot, action)
    click = await emulator.click(emulator.add_user(name="jo"), record.original_message_id,
                                 "confirm")
    assert await click.wait_for_response() == 6
    message = await emulator.wait_for_message(lambda m: m.content == "confirmed")
    assert message.id == record.original_message_id and message.components == []


async def test_members_intent_gets_chunked_guild(emulator: DiscordEmulator) -> None:
    emulator.add_user(name="kim")
    intents = discord.Intents.default()
    intents.members = True
    client = SandboxBot(intents)
    task = asyncio.create_task(client.start(emulator.token))
    await asyncio.wait_for(client.wait_until_ready(), 5)
    guild = client.get_guild(emulator.guild.id)
    assert guild is not None and guild.chunked
    assert sorted(m.name for m in guild.members) == ["Sandbox Bot", "kim", "owner"]
    fetched = await client.fetch_user(emulator.owner.id)
    assert fetched.created_at.year <= discord.utils.utcnow().year
    await client.close()
    await asyncio.wait_for(task, 5)


async def test_channel_messages_reach_the_bot_over_the_gateway(emulator: DiscordEmulator,
                                                               sandbox_bot: SandboxBot) -> None:
    channel = sandbox_bot.get_channel(emulator.channel_id)
    assert isinstance(channel, discord.TextChannel)
    created = asyncio.ensure_future(sandbox_bot.wait_for("message",
                                                         check=lambda m: m.content == "hi"))
    edited = asyncio.ensure_future(sandbox_bot.wait_for("message_edit"))
    deleted = asyncio.ensure_future(sandbox_bot.wait_for("raw_message_delete"))
    sent = await channel.send("hi")
    assert (await asyncio.wait_for(created, 5)).id == sent.id
    await sent.edit(content="hello")
    before, after = await asyncio.wait_for(edited, 5)
    assert (before.content, after.content) == ("hi", "hello")
    await sent.delete()
    assert (await asyncio.wait_for(deleted, 5)).message_id == sent.id
    assert emulator.messages[sent.id].deleted
    with pytest.raises(discord.NotFound):
        await channel.fetch_message(sent.id)
    assert emulator.internal_errors == []


async def test_invalidated_session_makes_discord_py_identify_again(emulator: DiscordEmulator,
                                                                   sandbox_bot: SandboxBot) -> None:
    await emulator.disconnect_gateway(resumable=False)
    with pytest.raises(EmulatorError, match="no bot"):
        await emulator.slash(emulator.add_user(name="lee"), "pick", {"flavour": "cherry"})
    await emulator.wait_until_ready()
    assert emulator.gateway.identifies == 2 and emulator.gateway.resumes == 0
    record = await emulator.slash(emulator.add_user(name="max"), "pick", {"flavour": "vanilla"})
    assert await record.wait_for_response() == 4


async def test_response_with_file_then_edits_replace_attachments(emulator: DiscordEmulator,
                                                                 sandbox_bot: SandboxBot) -> None:
    emulator.set_upload_limit(len(PNG))

    async def action(interaction: discord.Interaction) -> None:
        assert interaction.filesize_limit == len(PNG)
        await interaction.response.send_message("v1", file=discord.File(io.BytesIO(PNG), "1.png"))
        original = await interaction.original_response()
        await original.edit(content="v2", attachments=[
            *original.attachments, discord.File(io.BytesIO(b"two"), "2.png")])
        followup = await interaction.followup.send("note", wait=True)
        await followup.edit(content="note, edited")
        await (await interaction.followup.send("gone", wait=True)).delete()
        try:
            await followup.edit(attachments=[discord.File(io.BytesIO(PNG + b"!"), "big.png")])
        finally:
            await interaction.edit_original_response(attachments=[])

    record = await run_action(emulator, sandbox_bot, action)
    assert [(e.status, e.code) for e in sandbox_bot.errors] == [(413, 40005)]
    original, note, gone = emulator.messages_of(record)
    assert gone.deleted and not note.deleted
    assert [[a.filename for a in rev.attachments] for rev in original.history] == [
        ["1.png"], ["1.png", "2.png"], []]
    assert original.history[1].attachments[1].data == b"two" and original.content == "v2"
    assert [rev.content for rev in note.history] == ["note", "note, edited"]


async def test_raw_gateway_plain_json_heartbeat_and_bad_compression(
        emulator: DiscordEmulator) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{emulator.gateway_url}?v=10&encoding=json") as ws:
            hello = await ws.receive_json()
            assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] == 41250
            await ws.send_json({"op": 1, "d": None})
            assert (await ws.receive_json())["op"] == 11
            await ws.send_json({"op": 2, "d": {"token": emulator.token, "intents": 0}})
            ready = await ws.receive_json()
            assert (ready["t"], ready["s"]) == ("READY", 1)
            assert ready["d"]["resume_gateway_url"] == emulator.gateway_url
            guild = await ws.receive_json()
            assert (guild["t"], guild["s"], guild["d"]["id"]) == (
                "GUILD_CREATE", 2, str(emulator.guild.id))
        async with session.ws_connect(f"{emulator.gateway_url}?compress=brotli") as ws:
            await ws.receive()
            assert ws.close_code == 4002
