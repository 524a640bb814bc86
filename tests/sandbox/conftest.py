"""A fresh emulator per test, and the test bot logged in to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.endpoints import DISCORD_API_URL, DISCORD_GATEWAY_URL, apply_endpoints
from bot.sandbox import DiscordEmulator
from tests.sandbox.sandbox_bot import SandboxBot


@pytest.fixture
async def emulator() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator(token="sandbox-token") as em:
        apply_endpoints(em.api_url, em.gateway_url)
        yield em
        assert em.internal_errors == []
    apply_endpoints(DISCORD_API_URL, DISCORD_GATEWAY_URL)


@pytest.fixture
async def bot(emulator: DiscordEmulator) -> AsyncIterator[SandboxBot]:
    client = SandboxBot()
    task = asyncio.create_task(client.start(emulator.token))
    await emulator.wait_until_ready()
    await emulator.wait_for_commands("run", "pick")
    yield client
    await client.close()
    await asyncio.wait_for(task, 5)
