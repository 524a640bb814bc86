"""End-to-end harness: the real ImagineBot against the Discord emulator, with a tiny model.

tests/conftest.py registers the fixtures (``shared_engine``, ``test_model``; ``emulator`` is
in emulator.py)::

    from tests.support.bot import running_bot

    pytestmark = pytest.mark.asyncio(loop_scope="module")

    async def test_x(tmp_path, emulator, shared_engine):
        async with running_bot(tmp_path, emulator, engine=shared_engine) as bot:
            user = emulator.add_user(name="alice")
            record = await emulator.slash(user, "imagine", {"prompt": "a cat"})
            message = await wait_for_result(emulator, record)

``shared_engine`` is one engine worker per test module (spawning one and importing torch
costs seconds), so the module's tests and fixtures must share the module's event loop, hence
``loop_scope="module"`` for the tests and for every async fixture here. Commands that never
generate need no worker: ``idle_bot`` gives a fresh emulator and a bot with an idle engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot._plugin_registry import PluginRegistry
from bot.app import ImagineBot
from bot.jobs.models import Job
from bot.settings import Settings
from engine.client import EngineClient
from sandbox import DiscordEmulator, InteractionRecord, StoredMessage
from tests.support.emulator import open_emulator

#: The checkout, importable by subprocesses that run the bot from it.
REPO = Path(__file__).resolve().parents[2]
#: Seconds a test waits for a bot to come up or a result to arrive before failing.
START_TIMEOUT = 60.0
RESULT_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def test_model(tiny_model: Callable[[str], Path]) -> Path:
    """The tiny random-weight SD1.5 model (32x32, 2 steps by default), built once per run."""
    return tiny_model("sd15")


def engine_settings(model: Path, output_dir: Path, **overrides: Any) -> Settings:
    """What the bot and the shared engine must agree on: model, outputs, previews."""
    values: dict[str, Any] = {"model": str(model), "output_dir": output_dir,
                              "preview_every": 1, "device": "cpu", "dtype": "float32"}
    return Settings(**(values | overrides))


@dataclass(frozen=True)
class SharedEngine:
    client: EngineClient
    settings: Settings


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_engine(test_model: Path, tmp_path_factory: pytest.TempPathFactory
                        ) -> AsyncIterator[SharedEngine]:
    """One engine worker for the module, with the plugins' operation modules loaded."""
    settings = engine_settings(test_model, tmp_path_factory.mktemp("outputs"))
    client = EngineClient(settings, PluginRegistry(settings).operation_modules())
    await client.start()
    yield SharedEngine(client, settings)
    await client.close()


def bot_settings(tmp_path: Path, emulator: DiscordEmulator, engine: SharedEngine | None = None,
                 **overrides: Any) -> Settings:
    """Settings for a bot on ``emulator`` with its database and files under ``tmp_path``.

    Without a shared engine the bot starts its own; pass ``model=`` then.
    """
    base = engine.settings if engine else engine_settings(overrides.pop("model"),
                                                          tmp_path / "outputs")
    values = base.model_dump() | {
        "discord_token": emulator.token, "discord_api_url": emulator.api_url,
        "discord_gateway_url": emulator.gateway_url,
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "backup_dir": tmp_path / "backups", "cooldown_seconds": 0,
    }
    return Settings(**(values | overrides))


@contextlib.asynccontextmanager
async def running_bot(tmp_path: Path, emulator: DiscordEmulator, *,
                      engine: SharedEngine | None = None, sync: bool = False,
                      shutdown_grace: float = 30.0, **overrides: Any
                      ) -> AsyncIterator[ImagineBot]:
    """Start ImagineBot on the emulator, wait until it is ready with commands synced, and
    close it on exit. Settings overrides are keyword arguments (``queue_per_user=1``...).
    Two bots in turn on one ``tmp_path`` share the database: that is a restart."""
    settings = bot_settings(tmp_path, emulator, engine, **overrides)
    bot = ImagineBot(settings, engine=engine.client if engine else None,
                     clock=emulator.clock.now, sync_commands=sync, shutdown_grace=shutdown_grace,
                     guild_ready_timeout=0.05)
    runner = asyncio.create_task(bot.start(emulator.token), name="bot")

    async def ready() -> None:
        await bot.commands_synced.wait()
        await bot.wait_until_ready()

    waiter = asyncio.create_task(ready())
    done, _ = await asyncio.wait({runner, waiter}, timeout=START_TIMEOUT,
                                 return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        await bot.close()
        if runner in done:
            runner.result()  # the start-up error
        raise TimeoutError("the bot did not become ready")
    try:
        yield bot
    finally:
        await bot.close()
        await asyncio.wait_for(runner, 30)


Predicate = Callable[[StoredMessage], bool]


async def wait_for_result(emulator: DiscordEmulator, record: InteractionRecord,
                          timeout: float = RESULT_TIMEOUT) -> StoredMessage:  # noqa: ASYNC109
    """The interaction's message once it carries the result embed."""
    return await emulator.wait_for_message(
        lambda m: m.interaction_id == record.id and bool(m.embeds) and bool(m.attachments),
        timeout)


async def wait_for_job(bot: ImagineBot, job_id: str, state: str, tries: int = 200) -> Job:
    """The job row once it reached ``state`` (the row is written just after the message)."""
    for _ in range(tries):
        job = await bot.jobs.get(job_id)
        if job is not None and job.state == state:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} is {job and job.state}, not {state}")


async def wait_for_text(emulator: DiscordEmulator, record: InteractionRecord, text: str,
                        timeout: float = RESULT_TIMEOUT) -> StoredMessage:  # noqa: ASYNC109
    """The interaction's message once its content contains (or contained) ``text``."""
    return await emulator.wait_for_message(
        lambda m: m.interaction_id == record.id and any(text in r.content for r in m.history),
        timeout)


def idle_engine(tmp_path: Path) -> SharedEngine:
    """An engine client that is never started: commands that do not generate need no worker."""
    settings = engine_settings(Path("demo"), tmp_path / "outputs")
    return SharedEngine(EngineClient(settings), settings)


@contextlib.asynccontextmanager
async def idle_bot(tmp_path: Path, **overrides: Any
                   ) -> AsyncIterator[tuple[DiscordEmulator, ImagineBot]]:
    """A fresh emulator and the real bot on it, for commands that never reach the engine."""
    async with open_emulator() as emulator, running_bot(
            tmp_path, emulator, engine=idle_engine(tmp_path), **overrides) as bot:
        yield emulator, bot


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


@contextlib.asynccontextmanager
async def bot_process(tmp_path: Path, emulator: DiscordEmulator, model: Path,
                      **extra: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A real ``imaginebot run`` process on ``emulator``, ready (commands synced) when yielded;
    its output goes to ``tmp_path / "bot.log"``, and it is killed on exit if still running.

    The environment drops the test's own ``IMAGINEBOT_*`` variables and keeps files under
    ``tmp_path``; ``extra`` adds variables.
    """
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("IMAGINEBOT_")} | {
        "IMAGINEBOT_DISCORD_TOKEN": emulator.token,
        "IMAGINEBOT_DISCORD_API_URL": emulator.api_url,
        "IMAGINEBOT_DISCORD_GATEWAY_URL": emulator.gateway_url,
        "IMAGINEBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "IMAGINEBOT_MODEL": str(model), "IMAGINEBOT_DEVICE": "cpu",
        "IMAGINEBOT_OUTPUT_DIR": str(tmp_path / "outputs"),
        "IMAGINEBOT_BACKUP_DIR": str(tmp_path / "backups"),
        "PYTHONPATH": str(REPO),
    } | extra
    with (tmp_path / "bot.log").open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", cwd=tmp_path, env=env,
            stdout=log_file, stderr=log_file)
    try:
        await emulator.wait_for_commands("imagine", timeout=120)
        await emulator.wait_until_ready(timeout=30)
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
