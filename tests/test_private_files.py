"""`imaginebot run` keeps its files to its own user: old ones are tightened, new ones are private.

A real process, because the umask is process-wide: the bot sets it at startup and its engine
worker inherits it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest

from sandbox import DiscordEmulator
from tests.support.bot import bot_process, wait_for_result

# Slow: a bot process and its engine worker, which imports torch.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def readable_by_everyone(tmp_path: Path) -> dict[Path, int]:
    """What an older version left behind under a umask of 022: the paths and their modes."""
    database = tmp_path / "bot.db"
    sqlite3.connect(database).close()
    wal, shm = tmp_path / "bot.db-wal", tmp_path / "bot.db-shm"
    wal.touch()
    shm.touch()
    backups, outputs = tmp_path / "backups", tmp_path / "outputs"
    backup = backups / "imaginebot-2024-01-01.db"
    (outputs / "old-job").mkdir(parents=True)
    backups.mkdir()
    sqlite3.connect(backup).close()
    for path in (database, wal, shm, backup):
        path.chmod(0o644)
    for path in (backups, outputs):
        path.chmod(0o755)
    return {database: 0o600, wal: 0o600, shm: 0o600, backup: 0o600, backups: 0o700,
            outputs: 0o700}


async def test_old_files_are_tightened_and_new_ones_are_private(
        tmp_path: Path, test_model: Path, emulator: DiscordEmulator):
    expected = readable_by_everyone(tmp_path)
    before = {path: mode(path) for path in expected}
    async with bot_process(tmp_path, emulator, test_model, OMP_NUM_THREADS="1") as bot:
        assert {path: mode(path) for path in expected} == expected

        user = emulator.add_user(name="alice")
        record = await emulator.slash(user, "imagine", {"prompt": "a cat", "steps": 2})
        result = await wait_for_result(emulator, record, timeout=120)
        job_id = result.embeds[0]["footer"]["text"].split()[1]
        job_folder = tmp_path / "outputs" / job_id  # written by the worker process
        assert mode(job_folder) == 0o700
        images = list(job_folder.iterdir())
        assert images and {mode(image) for image in images} == {0o600}
        assert mode(tmp_path / "bot.db-wal") == 0o600
        bot.terminate()
        await asyncio.wait_for(bot.wait(), 60)
    log = (tmp_path / "bot.log").read_text()
    (line,) = [line for line in log.splitlines() if "made private" in line]
    for path, private in expected.items():
        assert f"{path} {before[path]:04o} -> {private:04o}" in line
