"""``imaginebot playground``: the emulator, the real bot against it, and a page to play with both.

The bot runs as its own ``imaginebot run`` process with the emulator's URLs and token, so it
cannot tell the playground from Discord: everything a person does on the page reaches it as the
interactions Discord would send. The bot gets a process group of its own, so that stopping the
playground stops it (and its engine worker) and nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import threading
import webbrowser
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sandbox.clock import DISCORD_EPOCH_MS
from sandbox.emulator import DiscordEmulator, GuildConfig
from sandbox.models import ALL_PERMISSIONS, EVERYONE_PERMISSIONS, User
from sandbox.web import Person, PlaygroundServer
from sandbox.web.server import is_loopback

#: Fixed ids, so balances and jobs in the SQLite file under --data belong to the same people
#: on the next start. Their snowflakes date from 2024: old enough for the bot's account-age rule.
FOUNDED_MS = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000) - DISCORD_EPOCH_MS
PEOPLE = (("alice", "#e67e22", False), ("bob", "#1abc9c", False), ("admin", "#e91e63", True))
GUILD_ID = (FOUNDED_MS << 22) | 1
#: How long the bot may take to log in and register its commands (first start migrates a DB).
READY_SECONDS = 300.0
#: How long the bot may take to finish its running job after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 20.0
#: Settings the playground decides: where the bot finds "Discord", and where it keeps data.
OWN_SETTINGS = ("IMAGINEBOT_DISCORD_TOKEN", "IMAGINEBOT_DISCORD_API_URL",
                "IMAGINEBOT_DISCORD_GATEWAY_URL", "IMAGINEBOT_DATABASE_URL",
                "IMAGINEBOT_OUTPUT_DIR", "IMAGINEBOT_BACKUP_DIR", "IMAGINEBOT_ADMIN_USER_IDS",
                "IMAGINEBOT_ALLOWED_CHANNEL_IDS")


def add_playground_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve the page on (default: loopback only; the page "
                             "has no login)")
    parser.add_argument("--port", type=int, default=8080, help="port for the page (0: any free)")
    parser.add_argument("--data", type=Path, default=Path("playground-data"),
                        help="folder for the SQLite database, images and the bot's log")
    parser.add_argument("--open", action="store_true", help="open the page in a browser")


def playground_command(args: argparse.Namespace) -> int:
    """Run until Ctrl-C, SIGTERM or the bot's exit; 0 after a requested stop."""
    if not is_loopback(args.host):
        say(f"warning: serving on {args.host}: anyone who can reach it can act as any "
            "playground user, admin included (the page has no login)", err=True)
    return asyncio.run(Playground(args.host, args.port, args.data.resolve(), args.open).run())


def say(line: str, err: bool = False) -> None:
    print(f"imaginebot playground: {line}", file=sys.stderr if err else sys.stdout, flush=True)


def people(emulator: DiscordEmulator) -> list[Person]:
    """alice and bob (members) and admin (an administrator, in IMAGINEBOT_ADMIN_USER_IDS)."""
    return [Person(emulator.add_user((FOUNDED_MS << 22) | (index + 2), name,
                                     permissions=ALL_PERMISSIONS if admin
                                     else EVERYONE_PERMISSIONS), colour, admin)
            for index, (name, colour, admin) in enumerate(PEOPLE)]


def bot_environment(emulator: DiscordEmulator, data: Path, admins: list[User]) -> dict[str, str]:
    """The caller's environment (so IMAGINEBOT_MODEL and the rest work as for ``run``) with
    the emulator as Discord and every file under ``data``."""
    env = {name: value for name, value in os.environ.items() if name not in OWN_SETTINGS}
    return env | {
        "IMAGINEBOT_DISCORD_TOKEN": emulator.token,
        "IMAGINEBOT_DISCORD_API_URL": emulator.api_url,
        "IMAGINEBOT_DISCORD_GATEWAY_URL": emulator.gateway_url,
        "IMAGINEBOT_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'imaginebot.db'}",
        "IMAGINEBOT_OUTPUT_DIR": str(data / "outputs"),
        "IMAGINEBOT_BACKUP_DIR": str(data / "backups"),
        "IMAGINEBOT_ADMIN_USER_IDS": ",".join(str(user.id) for user in admins),
    }


class Playground:
    def __init__(self, host: str, port: int, data: Path, open_browser: bool) -> None:
        self.host, self.port, self.data, self.open_browser = host, port, data, open_browser
        self.stop = asyncio.Event()
        self.bot: asyncio.subprocess.Process | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        self.data.mkdir(parents=True, exist_ok=True)
        emulator = DiscordEmulator(token=secrets.token_urlsafe(32), guild=GuildConfig(
            id=GUILD_ID, name="imaginebot playground", channel_name="playground"))
        emulator.bot_user.name = "imaginebot"
        await emulator.start()
        server = PlaygroundServer(emulator, people(emulator))
        try:
            try:
                url = await server.start(self.host, self.port)
            except OSError as error:
                say(f"cannot serve on {self.host}:{self.port}: {error.strerror or error}; "
                    "pass another --port", err=True)
                return 1
            return await self._serve(emulator, server, url)
        finally:
            await self._stop_bot()
            await server.close()
            await emulator.close()
            say("stopped")

    async def _serve(self, emulator: DiscordEmulator, server: PlaygroundServer, url: str) -> int:
        log = self.data / "bot.log"
        admins = [p.user for p in server.people.values() if p.admin]
        say(f"starting the bot (its log: {log})")
        with log.open("wb") as log_file:
            self.bot = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run", env=bot_environment(emulator, self.data,
                                                                        admins),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True)
        ready = asyncio.ensure_future(self._ready(emulator))
        if not await self._first(ready):
            if self.stop.is_set():
                return 0
            say(f"the bot did not start; see {log}", err=True)
            return 1
        say(f"ready: {url}  (Ctrl-C stops it)")
        if self.open_browser:
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
        ended = asyncio.ensure_future(self.stop.wait())
        if await self._first(ended):
            return 0
        say(f"the bot exited with status {self.bot.returncode}; see {log}", err=True)
        return 1

    async def _ready(self, emulator: DiscordEmulator) -> None:
        await emulator.wait_for_commands("imagine", "credits", timeout=READY_SECONDS)
        await emulator.wait_until_ready(timeout=READY_SECONDS)

    async def _first(self, task: asyncio.Future[Any]) -> bool:
        """Whether ``task`` finished before a stop request or the bot's exit (then cancelled)."""
        assert self.bot is not None
        exited: asyncio.Future[Any] = asyncio.ensure_future(self.bot.wait())
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({task, exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
        won = task.done() and not task.cancelled() and task.exception() is None
        for waiter in (task, exited, stopped):
            waiter.cancel()
        return won

    def _on_signal(self) -> None:
        """The first Ctrl-C stops gracefully; a second one kills the bot at once."""
        if self.stop.is_set():
            self._kill_bot()
        self.stop.set()

    async def _stop_bot(self) -> None:
        """SIGTERM lets the bot finish its running job; after the grace its group is killed."""
        bot = self.bot
        if bot is None:
            return
        if bot.returncode is None:
            say("stopping the bot")
            with contextlib.suppress(ProcessLookupError):
                bot.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(bot.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                say("the bot did not stop in time; killing it", err=True)
        self._kill_bot()
        await bot.wait()

    def _kill_bot(self) -> None:
        """Kill the bot's process group: the bot and its engine worker, if still there."""
        if self.bot is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.bot.pid, signal.SIGKILL)
