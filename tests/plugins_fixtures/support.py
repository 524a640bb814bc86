"""Helpers the credit, admin and plugin end-to-end tests share on top of tests/bot_harness.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.app import ImagineBot
from bot.endpoints import DISCORD_API_URL, DISCORD_GATEWAY_URL, apply_endpoints
from bot.sandbox import DiscordEmulator, InteractionRecord, StoredMessage
from engine.client import EngineClient
from tests.bot_harness import SharedEngine, engine_settings, running_bot


def idle_engine(tmp_path: Path) -> SharedEngine:
    """An engine client that is never started: commands that do not generate need no worker."""
    settings = engine_settings(Path("demo"), tmp_path / "outputs")
    return SharedEngine(EngineClient(settings), settings)


@contextlib.asynccontextmanager
async def idle_bot(tmp_path: Path, **overrides: Any
                   ) -> AsyncIterator[tuple[DiscordEmulator, ImagineBot]]:
    """A fresh emulator and the real bot on it, for commands that never reach the engine."""
    async with DiscordEmulator(token="sandbox-token") as emulator:
        async with running_bot(tmp_path, emulator, engine=idle_engine(tmp_path),
                               **overrides) as bot:
            yield emulator, bot
        assert emulator.internal_errors == []
    apply_endpoints(DISCORD_API_URL, DISCORD_GATEWAY_URL)


async def answer(emulator: DiscordEmulator, record: InteractionRecord,
                 timeout: float = 10.0) -> StoredMessage:  # noqa: ASYNC109
    """The last message an interaction produced, once it has answered with one."""
    await record.wait_for_response(timeout)
    for _ in range(int(timeout / 0.02)):
        messages = emulator.messages_of(record)
        if messages:
            return messages[-1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"interaction {record.id} answered without a message")
