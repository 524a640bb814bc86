"""Plugin buttons end to end: the real bot, engine and ledger against the Discord emulator.

Extra plugins are installed the way third-party ones are: a distribution on sys.path whose
entry_points.txt names them in the ``imaginebot.plugins`` group.
"""

from __future__ import annotations

import importlib
import logging
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from bot._plugin_registry import ENTRY_POINT_GROUP
from bot.ledger.models import Transfer
from sandbox import DiscordEmulator, StoredMessage, User
from tests.plugins_fixtures.priced import STAMP_PRICE
from tests.support.bot import SharedEngine, answer, running_bot, wait_for_result

# Slow: a real engine worker and a bot per test.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

START_CREDITS = 300  # signup 200 + daily 100


def install(directory: Path, monkeypatch: pytest.MonkeyPatch, **entry_points: str) -> Path:
    """A distribution on sys.path that declares ``entry_points`` (name -> module:attr)."""
    dist_info = directory / "imaginebot_test_plugins-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: imaginebot-test-plugins\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}\n")
    monkeypatch.syspath_prepend(str(directory))
    return directory


def uninstall(directory: Path) -> None:
    sys.path.remove(str(directory))
    importlib.invalidate_caches()


async def imagine(emulator: DiscordEmulator, user: User) -> tuple[StoredMessage, str]:
    record = await emulator.slash(user, "imagine", {"prompt": "a lighthouse", "steps": 2})
    message = await wait_for_result(emulator, record)
    params = next(c for c in message.custom_ids() if c.startswith("example:params:"))
    return message, params.split(":")[2]


async def click(emulator: DiscordEmulator, user: User, message: StoredMessage,
                custom_id: str) -> StoredMessage:
    return await answer(emulator, await emulator.click(user, message.id, custom_id))


async def click_holds(bot) -> dict[str, int]:
    async with bot.ledger.database.connect() as conn:
        rows = await conn.execute(select(Transfer.key, Transfer.user_id).where(
            Transfer.kind == "hold", Transfer.key.like("stamp:%")))
        return {key: user_id for key, user_id in rows}


async def test_plugin_buttons_charge_each_clicker_and_isolate_failures(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine, monkeypatch, caplog):
    install(tmp_path / "site", monkeypatch, stamp="tests.plugins_fixtures.priced:plugin",
            wrecked="tests.plugins_fixtures.broken.raises_on_import")
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        # The broken plugin was logged and skipped; the bot and the other plugins work.
        assert "cannot even be imported" in bot.plugins.failed["wrecked"]
        assert {"example", "stamp"} <= set(bot.plugins.plugins)
        alice, bob, carol = (emulator.add_user(name=name) for name in ("alice", "bob", "carol"))
        message, job_id = await imagine(emulator, alice)
        stamp_ids = [f"stamp:s:{job_id}:{index}" for index in range(4)]
        assert [c for c in message.custom_ids() if c.startswith("stamp:")] == [
            *stamp_ids, f"stamp:boom:{job_id}:0", f"stamp:mute:{job_id}:0"]
        labels = [button.get("label") or button["emoji"]["name"]
                  for row in message.components for button in row["components"]
                  if button["custom_id"].startswith("stamp:")]
        assert labels == ["Stamp 1", "Stamp 2", "Stamp 3", "Stamp 4", "💥", "Mute"]

        params = await click(emulator, alice, message, f"example:params:{job_id}:0")
        assert params.ephemeral and "a lighthouse" in params.content
        assert "Steps: 2" in params.content

        alice_before = await bot.ledger.balance(alice.id)
        for user in (alice, bob):
            reply = await click(emulator, user, message, stamp_ids[1])
            assert reply.ephemeral
            assert reply.content == f"Stamped image 2 of job {job_id} for <@{user.id}>."
        assert await bot.ledger.balance(alice.id) == alice_before - STAMP_PRICE
        assert await bot.ledger.balance(bob.id) == START_CREDITS - STAMP_PRICE
        assert sorted((await click_holds(bot)).values()) == sorted([alice.id, bob.id])

        await bot.ledger.touch(carol.id)
        await bot.ledger.revoke(carol.id, START_CREDITS, emulator.owner.id, "test", "test:r")
        reply = await click(emulator, carol, message, stamp_ids[0])
        assert reply.ephemeral
        assert reply.content.startswith(f"This costs {STAMP_PRICE} credits and you have 0.")

        with caplog.at_level(logging.ERROR, logger="bot._plugin_registry"):
            reply = await click(emulator, bob, message, f"stamp:boom:{job_id}:0")
        assert reply.ephemeral and reply.content.startswith("Sorry, this button failed.")
        assert "the priced fixture plugin exploded" in caplog.text
        with caplog.at_level(logging.ERROR, logger="bot._plugin_registry"):
            reply = await click(emulator, bob, message, f"stamp:mute:{job_id}:0")
        assert reply.ephemeral and reply.content.startswith("Sorry, this button failed.")
        assert "stamp action 'mute' returned without answering the interaction" in caplog.text
        assert await bot.ledger.balance(bob.id) == START_CREDITS - STAMP_PRICE  # released
        assert await bot.ledger.pending_holds(bob.id) == 0
        assert await bot.ledger.audit() == []


async def test_buttons_survive_restarts_and_answer_when_their_plugin_is_gone(
        tmp_path, emulator: DiscordEmulator, shared_engine: SharedEngine, monkeypatch):
    site = install(tmp_path / "site", monkeypatch, stamp="tests.plugins_fixtures.priced:plugin")
    alice = emulator.add_user(name="alice")
    async with running_bot(tmp_path, emulator, engine=shared_engine):
        message, job_id = await imagine(emulator, alice)

    # A restart: nothing about the buttons was kept in memory, the job row is enough.
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        reply = await click(emulator, alice, message, f"stamp:s:{job_id}:3")
        assert reply.content == f"Stamped image 4 of job {job_id} for <@{alice.id}>."
        before = await bot.ledger.balance(alice.id)

    async with running_bot(tmp_path, emulator, engine=shared_engine,
                           plugins_disabled=["stamp"]) as bot:
        reply = await click(emulator, alice, message, f"stamp:s:{job_id}:0")
        assert reply.ephemeral
        assert reply.content == "This feature has been turned off on this bot."
        params = await click(emulator, alice, message, f"example:params:{job_id}:0")
        assert "a lighthouse" in params.content
        assert await bot.ledger.balance(alice.id) == before

    uninstall(site)
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        assert "stamp" not in bot.plugins.failed  # not broken: simply not installed any more
        reply = await click(emulator, alice, message, f"stamp:s:{job_id}:0")
        assert reply.ephemeral
        assert reply.content == "This button no longer does anything on this bot."

    install(tmp_path / "site-broken", monkeypatch,
            stamp="tests.plugins_fixtures.broken.raises_on_import")
    async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
        assert "stamp" in bot.plugins.failed
        reply = await click(emulator, alice, message, f"stamp:s:{job_id}:0")
        assert reply.ephemeral and "failed to start" in reply.content
        assert await bot.ledger.balance(alice.id) == before

        assert await bot.jobs.prune(emulator.clock.now() + timedelta(seconds=1)) == [job_id]
        reply = await click(emulator, alice, message, f"example:params:{job_id}:0")
        assert reply.ephemeral
        assert reply.content == "This image is no longer available (its job was deleted)."
