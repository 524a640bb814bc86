"""The bot process: ImagineBot wires the ledger, the engine, the job queue and the plugins.

Start-up order matters: the database must be migrated before the ledger opens, a local engine
worker must know the plugins' operation modules, DynamicItems must be registered before a click
can arrive, and the queue resumes last, when everything it reports to exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import shutil
import signal
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import discord
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from discord import app_commands
from discord.ext import commands
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import checks
from bot._plugin_registry import PluginRegistry
from bot.database import create_database, sqlite_path, upgrade
from bot.endpoints import apply_endpoints
from bot.generation import CancelButton, DiscordPresenter, refuse_deferred
from bot.housekeeping import build_scheduler, run_startup_housekeeping
from bot.incidents import report_unexpected
from bot.jobs.models import BotState
from bot.jobs.queue import JobQueue
from bot.ledger import Clock, Ledger, system_clock
from bot.loopwatch import LoopWatch
from bot.private_files import make_private
from bot.settings import Settings
from engine.client import EngineClient
from engine.dispatch import Engine
from engine.local import LocalEngine

log = logging.getLogger(__name__)

CORE_EXTENSIONS = ("bot.cogs.imagine", "bot.cogs.jobs", "bot.cogs.show", "bot.cogs.credits",
                   "bot.cogs.admin", "bot.cogs.unanswered", "bot.cogs.loras")
PRUNE_JOB_ID = "jobs-prune"
#: Seconds running jobs get to finish at shutdown before they are put back in the queue.
SHUTDOWN_GRACE = 60.0


class ImagineBot(commands.Bot):
    """The Discord client. Attributes below exist once ``setup_hook`` has run.

    Nothing here assumes one shard: switching the base to ``commands.AutoShardedBot`` is all a
    bot in thousands of guilds needs.

    ``engine`` is the engine the job queue dispatches to (``IMAGINEBOT_ENGINE``: a local worker
    or Redis). A client may be given (tests share one worker between bots); the bot then runs
    on it as its local engine, and neither starts nor closes it. ``sync_commands`` forces a
    command sync even when nothing changed; other ``options`` go to discord.py (tests shorten
    ``guild_ready_timeout``).
    """

    settings: Settings
    ledger: Ledger
    engine: Engine
    jobs: JobQueue
    plugins: PluginRegistry
    scheduler: AsyncIOScheduler

    def __init__(self, settings: Settings, *, sync_commands: bool = False,
                 engine: EngineClient | None = None, clock: Clock = system_clock,
                 shutdown_grace: float = SHUTDOWN_GRACE, **options: Any) -> None:
        super().__init__(command_prefix=commands.when_mentioned, help_command=None,
                         intents=discord.Intents(guilds=True),
                         allowed_mentions=discord.AllowedMentions.none(), **options)
        self.settings = settings
        self.clock = clock
        self.plugins = PluginRegistry(settings)
        self.presenter = DiscordPresenter(self)
        self._force_sync = sync_commands
        self._shared_client = engine
        #: Stops the engine the bot started itself (none for a shared client).
        self._close_engine: Callable[[], Awaitable[None]] | None = None
        self._grace = shutdown_grace
        self._database: AsyncEngine | None = None
        self._shutdown_task: asyncio.Future[None] | None = None
        self.commands_synced = asyncio.Event()
        #: Logs what blocks the event loop for more than a second (``stalls`` counts them).
        self.loopwatch = LoopWatch()
        self.tree.error(self.on_app_command_error)

    async def login(self, token: str) -> None:
        """Discord itself, a REST proxy or the emulator, as configured."""
        apply_endpoints(self.settings.discord_api_url, self.settings.discord_gateway_url)
        await super().login(token)

    async def setup_hook(self) -> None:
        self.loopwatch.start()
        settings = self.settings
        self._database = create_database(settings.database_url)
        await upgrade(self._database)
        self.ledger = Ledger(
            self._database, self.clock, signup_credits=settings.signup_credits,
            daily_credits=settings.daily_credits,
            min_account_age=timedelta(days=settings.min_account_age_days),
            hold_ttl=timedelta(minutes=settings.hold_ttl_minutes))
        self.engine = await self._open_engine()
        self.jobs = JobQueue(self._database, self.engine, self.ledger, clock=self.clock,
                             observer=self.presenter, per_user=settings.queue_per_user,
                             global_limit=settings.queue_global, max_batch=settings.max_batch,
                             crash_limit=settings.crash_limit)
        for extension in CORE_EXTENSIONS:
            try:
                await self.load_extension(extension)
            except commands.ExtensionError:
                log.exception("extension %s failed to load; carrying on without it", extension)
        await self.plugins.load(self)
        self.add_dynamic_items(CancelButton, *self.plugins.dynamic_items())
        self.scheduler = build_scheduler(
            self.ledger, self.jobs, backup_path=sqlite_path(settings.database_url),
            backup_dir=settings.backup_dir, backup_keep=settings.backup_keep,
            extra_jobs=[(PRUNE_JOB_ID, self.prune_jobs, {"trigger": "cron", "hour": 5})])
        self.scheduler.start()
        await self.jobs.start()
        await run_startup_housekeeping(self.ledger, self.jobs)
        await self.sync_commands(force=self._force_sync)
        # What exists now (modules, plugins, settings) lives as long as the process: keeping
        # the collector from rescanning it keeps its pauses, and so the loop's stalls, short.
        gc.freeze()

    async def _open_engine(self) -> Engine:
        """The engine of ``IMAGINEBOT_ENGINE``: ``local`` runs one worker process here (or on
        the shared client); a Redis URL dispatches to ``imaginebot worker`` processes."""
        settings = self.settings
        if self._shared_client is not None:
            return LocalEngine(self._shared_client, settings)
        if settings.engine == "local":
            client = EngineClient(settings, self.plugins.operation_modules())
            await client.start()
            self._close_engine = client.close
            return LocalEngine(client, settings)
        # Imported here: the redis client is needed only by bots that scale out.
        from engine.remote.engine import RedisEngine
        remote = RedisEngine(settings, settings.engine)
        await remote.start()
        self._close_engine = remote.close
        return remote

    # -- commands ---------------------------------------------------------------------------------

    def commands_digest(self) -> str:
        payload = sorted((command.to_dict(self.tree) for command in self.tree.get_commands()),
                         key=lambda command: (command["name"], command.get("type", 1)))
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()
                              ).hexdigest()

    async def sync_commands(self, *, force: bool = False) -> bool:
        """Sync with Discord only when the commands changed (syncing is rate-limited)."""
        assert self._database is not None and self.application_id is not None
        key, digest = f"commands:{self.application_id}", self.commands_digest()
        async with self._database.connect() as conn:
            stored = await conn.scalar(select(BotState.value).where(BotState.key == key))
        changed = force or stored != digest
        if changed:
            synced = await self.tree.sync()
            log.info("synced %d application commands", len(synced))
            async with self._database.begin() as conn:
                await conn.execute(delete(BotState).where(BotState.key == key))
                await conn.execute(insert(BotState).values(key=key, value=digest))
        else:
            log.info("application commands unchanged; not syncing")
        self.commands_synced.set()
        return changed

    async def on_app_command_error(self, interaction: discord.Interaction[Any],
                                   error: app_commands.AppCommandError) -> None:
        """Refusals become their message; anything else is logged and told in one sentence."""
        if isinstance(error, checks.CheckFailure):
            text = error.message
        elif isinstance(error, app_commands.CheckFailure):
            text = "You can't use this command here."
        elif isinstance(error, app_commands.TransformerError):
            text = f"“{error.value}” is not a valid value for this option."
        else:
            text = report_unexpected(log, error, "command %s failed for user %s",
                                     checks.command_name(interaction), interaction.user.id)
        if interaction.response.type == discord.InteractionResponseType.deferred_channel_message:
            await refuse_deferred(interaction, text)
        else:
            with contextlib.suppress(discord.HTTPException):
                await checks.refuse(interaction, text)

    # -- housekeeping and shutdown ----------------------------------------------------------------

    async def prune_jobs(self) -> int:
        """Forget finished jobs older than the retention period, and their image files."""
        cutoff = self.clock() - timedelta(days=self.settings.job_retention_days)
        ids = await self.jobs.prune(cutoff)
        await asyncio.to_thread(remove_outputs, self.settings.output_dir, ids)
        if ids:
            log.info("pruned %d job records older than %s", len(ids), cutoff)
        return len(ids)

    async def close(self) -> None:
        """Take no new jobs, let running ones finish (or put them back), then close all."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        if hasattr(self, "jobs"):
            await self.jobs.close(self._grace)
        if hasattr(self, "scheduler") and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self._close_engine is not None:
            await self._close_engine()
        if hasattr(self, "ledger"):
            await self.ledger.close()
        elif self._database is not None:
            await self._database.dispose()
        await super().close()
        self.loopwatch.stop()


def remove_outputs(output_dir: Path, job_ids: list[str]) -> None:
    for job_id in job_ids:
        shutil.rmtree(output_dir / job_id, ignore_errors=True)


def run_bot(settings: Settings, sync: bool) -> int:
    """``imaginebot run``: connect and serve until SIGTERM/SIGINT, then shut down gracefully."""
    if settings.discord_token is None:
        log.error("no bot token: set IMAGINEBOT_DISCORD_TOKEN")
        return 2
    token = settings.discord_token.get_secret_value()
    make_private(settings)  # before the database, the worker or any output is opened

    async def main() -> int:
        bot = ImagineBot(settings, sync_commands=sync)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.close()))
        try:
            async with bot:
                await bot.start(token)
        except discord.LoginFailure:
            log.error("Discord refused the bot token")
            return 1
        return 0

    return asyncio.run(main())
