"""apply_endpoints: what points discord.py at the emulator (and back at Discord)."""

from __future__ import annotations

import discord
from discord.http import Route

from bot.endpoints import DISCORD_API_URL, DISCORD_GATEWAY_URL, apply_endpoints


def test_apply_endpoints_points_discord_py_and_restores() -> None:
    apply_endpoints("http://127.0.0.1:9/api/v10/", "ws://127.0.0.1:9/gateway")
    assert Route("GET", "/users/@me").url == "http://127.0.0.1:9/api/v10/users/@me"
    assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == "ws://127.0.0.1:9/gateway"
    apply_endpoints(DISCORD_API_URL, DISCORD_GATEWAY_URL)
    assert Route("GET", "/users/@me").url == "https://discord.com/api/v10/users/@me"
    assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == DISCORD_GATEWAY_URL
