"""`imaginebot run` as a real process: it serves, and SIGTERM lets the running job finish."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from sandbox import DiscordEmulator
from tests.support.bot import bot_process, wait_for_result, wait_for_text

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_sigterm_finishes_the_running_job_then_exits(tmp_path: Path, test_model: Path,
                                                          emulator: DiscordEmulator):
    async with bot_process(tmp_path, emulator, test_model) as bot:
        user = emulator.add_user(name="alice")
        record = await emulator.slash(user, "imagine", {"prompt": "a cat", "steps": 12})
        await wait_for_text(emulator, record, "Generating", timeout=120)
        bot.send_signal(signal.SIGTERM)
        result = await wait_for_result(emulator, record, timeout=60)
        assert result.attachments[0].filename == "grid.png"
        assert await asyncio.wait_for(bot.wait(), 60) == 0
    log = (tmp_path / "bot.log").read_text()
    assert "Traceback" not in log, log
