"""The one Discord emulator fixture: every test that talks to "Discord" gets it here.

The emulator is strict, so an ``internal_errors`` entry (a bug in the emulator, or a request
it failed to handle) fails the test that caused it. discord.py's endpoints point at the
emulator while it runs, and back at Discord afterwards, so no test depends on another's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest_asyncio

from bot.endpoints import DISCORD_API_URL, DISCORD_GATEWAY_URL, apply_endpoints
from sandbox import DiscordEmulator


@contextlib.asynccontextmanager
async def open_emulator() -> AsyncIterator[DiscordEmulator]:
    """A started emulator with discord.py pointed at it; for tests that need one inside a
    helper (``idle_bot``) rather than as a fixture."""
    async with DiscordEmulator(token="sandbox-token") as em:
        apply_endpoints(em.api_url, em.gateway_url)
        try:
            yield em
        finally:
            apply_endpoints(DISCORD_API_URL, DISCORD_GATEWAY_URL)
        assert em.internal_errors == []


# Module loop scope: the end-to-end tests share one engine worker per module (see bot.py), so
# their tests and fixtures run on the module's loop; a test module using ``emulator`` sets
#     pytestmark = pytest.mark.asyncio(loop_scope="module")
@pytest_asyncio.fixture(loop_scope="module")
async def emulator() -> AsyncIterator[DiscordEmulator]:
    """A fresh emulator per test."""
    async with open_emulator() as em:
        yield em
