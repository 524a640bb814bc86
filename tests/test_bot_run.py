"""`imaginebot run` as a real process: it serves, and SIGTERM lets the running job finish."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from bot.sandbox import DiscordEmulator
from tests.support.bot import wait_for_result, wait_for_text

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_sigterm_finishes_the_running_job_then_exits(tmp_path: Path, test_model: Path,
                                                          emulator: DiscordEmulator):
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("IMAGINEBOT_")} | {
        "IMAGINEBOT_DISCORD_TOKEN": emulator.token,
        "IMAGINEBOT_DISCORD_API_URL": emulator.api_url,
        "IMAGINEBOT_DISCORD_GATEWAY_URL": emulator.gateway_url,
        "IMAGINEBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "IMAGINEBOT_MODEL": str(test_model), "IMAGINEBOT_DEVICE": "cpu",
        "IMAGINEBOT_OUTPUT_DIR": str(tmp_path / "outputs"),
        "IMAGINEBOT_BACKUP_DIR": str(tmp_path / "backups"),
        "PYTHONPATH": str(REPO),
    }
    log_path = tmp_path / "bot.log"
    with log_path.open("wb") as log_file:
        bot = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", cwd=tmp_path, env=env,
            stdout=log_file, stderr=log_file)
    try:
        await emulator.wait_for_commands("imagine", timeout=120)
        await emulator.wait_until_ready(timeout=30)
        user = emulator.add_user(name="alice")
        record = await emulator.slash(user, "imagine", {"prompt": "a cat", "steps": 12})
        await wait_for_text(emulator, record, "Generating", timeout=120)
        bot.send_signal(signal.SIGTERM)
        result = await wait_for_result(emulator, record, timeout=60)
        assert result.attachments[0].filename == "grid.png"
        assert await asyncio.wait_for(bot.wait(), 60) == 0
    finally:
        if bot.returncode is None:
            bot.kill()
            await bot.wait()
    log = log_path.read_text()
    assert "Traceback" not in log, log
