"""Where discord.py sends REST calls and opens the gateway: Discord, a REST proxy or the sandbox."""

from __future__ import annotations

import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

DISCORD_API_URL = "https://discord.com/api/v10"
DISCORD_GATEWAY_URL = "wss://gateway.discord.gg/"


def apply_endpoints(api_url: str, gateway_url: str) -> None:
    """Point discord.py at ``api_url``/``gateway_url`` process-wide.

    Every REST call (including interaction callbacks and webhook followups) builds its URL from
    ``Route.BASE`` at call time, and a plain Client opens ``DEFAULT_GATEWAY`` without asking
    GET /gateway/bot. Passing Discord's own URLs restores the defaults. Attachment URLs come from
    the payloads, so they follow whichever server sent them.
    """
    Route.BASE = api_url.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
