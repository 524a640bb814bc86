"""The job path under faults, end to end: the real bot, ledger and engine on the emulator.

Database errors in the dispatcher, a crash between hold and enqueue, a sweep during a long job,
a request that keeps crashing the worker, a crash in a shared batch, shutdown while the
dispatcher keeps dying, and a worker that stops answering. Nothing may be lost, stuck or charged
for what was not delivered.

The module's engine worker also loads tests.support.engine_ops, whose txt2img kills the worker
for a prompt containing CRASH_PROMPT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine

from bot._plugin_registry import PluginRegistry
from bot.housekeeping import release_stale_holds
from bot.jobs import retry
from bot.jobs.fair import FairQueue
from bot.jobs.models import JobState
from bot.jobs.queue import ORPHAN_AGE
from bot.jobs.store import JobStore
from engine.client import EngineClient
from sandbox import DiscordEmulator
from tests.support.bot import (
    SharedEngine,
    engine_settings,
    running_bot,
    wait_for_job,
    wait_for_result,
    wait_for_text,
)
from tests.support.engine_ops import CRASH_PROMPT
from tests.test_bot_imagine import assert_untouched, imagine, job_id_of, refusal

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(test_model: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[SharedEngine]:
    settings = engine_settings(test_model, tmp_path_factory.mktemp("outputs"))
    modules = [*PluginRegistry(settings).operation_modules(), "tests.support.engine_ops"]
    async with EngineClient(settings, modules) as client:
        yield SharedEngine(client, settings)


def fail_statements(database: AsyncEngine, matches: Callable[[str, Any], bool],
                    times: int) -> list[str]:
    """Make the next ``times`` matching SQL statements fail as a locked database does."""
    failed: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if len(failed) < times and matches(statement, parameters):
            failed.append(statement)
            # As SQLAlchemy wraps a real driver error (2.0 passes a raw one from this hook on).
            raise exc.OperationalError(statement, parameters,
                                       sqlite3.OperationalError("database is locked"))

    event.listen(database.sync_engine, "before_cursor_execute", before)
    return failed


async def test_a_batch_whose_database_writes_keep_failing_is_put_back_and_runs(
        tmp_path, emulator: DiscordEmulator, engine: SharedEngine, caplog):
    async with running_bot(tmp_path, emulator, engine=engine) as bot:
        user = emulator.add_user(name="dora")
        before = await bot.ledger.touch(user.id)
        # More failures than retries: the batch fails once, is put back and runs again.
        failed = fail_statements(
            bot.ledger.database, lambda sql, values: sql.startswith("UPDATE jobs")
            and JobState.RUNNING in values, times=len(retry.DELAYS) + 1)
        record = await imagine(emulator, user, steps=2)
        message = await wait_for_result(emulator, record)
        job_id = message.embeds[0]["footer"]["text"].split()[1]
        assert len(failed) == len(retry.DELAYS) + 1
        assert "database error in JobStore.save" in caplog.text  # retried before giving up
        assert f"batch of jobs {job_id} failed; putting them back" in caplog.text
        job = await wait_for_job(bot, job_id, JobState.DELIVERED)
        assert job.attempts == 1  # the failed try never started it
        assert await bot.ledger.balance(user.id) == before - job.cost
        assert await bot.ledger.audit() == []


async def test_hold_and_job_are_one_transaction_and_orphans_are_released(
        tmp_path, emulator: DiscordEmulator, engine: SharedEngine, monkeypatch):
    user = emulator.add_user(name="olga")
    async with running_bot(tmp_path, emulator, engine=engine) as bot:
        before = await bot.ledger.touch(user.id)

        async def dies(*args: Any) -> None:
            raise RuntimeError("the process died between hold and enqueue")

        monkeypatch.setattr(JobStore, "insert", staticmethod(dies))
        record = await emulator.slash(user, "imagine", {"prompt": "a cat", "steps": 2})
        await wait_for_text(emulator, record, "something went wrong")
        monkeypatch.undo()
        await assert_untouched(bot, user, before)  # the hold was rolled back with the row

        # A hold written the old way (its own transaction) by a process that died before the
        # row; this process took it, so for all it knows it is a plugin's click in progress.
        orphan = await bot.ledger.hold(user.id, 4, key="gen:1234567890")
        emulator.clock.advance(ORPHAN_AGE.total_seconds() + 60)
        assert await bot.jobs.release_orphan_holds() == 0
    async with running_bot(tmp_path, emulator, engine=engine) as bot:
        assert await bot.ledger.hold_status(orphan) == "released"  # at startup
        await assert_untouched(bot, user, before)


async def test_a_sweep_during_a_long_job_leaves_its_hold_to_be_captured(
        tmp_path, emulator: DiscordEmulator, engine: SharedEngine):
    user = emulator.add_user(name="pia")
    async with running_bot(tmp_path, emulator, engine=engine, shutdown_grace=0.0) as bot:
        before = await bot.ledger.touch(user.id)
        record = await imagine(emulator, user, steps=100)
        job_id = job_id_of(await wait_for_text(emulator, record, "Generating"))
    # Put back by the shutdown, it runs after the restart with a hold older than the process
    # and than ORPHAN_AGE, as a recovered job does: only its row tells it from an orphan.
    emulator.clock.advance(2 * ORPHAN_AGE.total_seconds())
    async with running_bot(tmp_path, emulator, engine=engine) as bot:
        click = await bot.ledger.hold(user.id, 1, key="example:params:987654321")  # in progress
        await wait_for_job(bot, job_id, JobState.RUNNING)
        await release_stale_holds(bot.ledger, bot.jobs)
        during = await bot.jobs.get(job_id)
        assert during is not None and during.result is None  # the sweep ran during the job
        await wait_for_result(emulator, record)
        job = await wait_for_job(bot, job_id, JobState.DELIVERED)
        assert not job.delivered_free and bot.jobs.uncharged_deliveries == 0
        assert await bot.ledger.hold_status(job.hold_id) == "captured"
        assert await bot.ledger.release(click)  # the click's hold was left to the click
        assert await bot.ledger.balance(user.id) == before - job.cost
        assert await bot.ledger.audit() == []


async def test_a_request_that_crashed_the_worker_twice_is_refused_free(
        tmp_path, emulator: DiscordEmulator, engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=engine) as bot:
        user = emulator.add_user(name="quinn")
        before = await bot.ledger.touch(user.id)
        for _ in range(bot.settings.crash_limit):
            record = await imagine(emulator, user, CRASH_PROMPT, steps=2, seed=1)
            crashed = await wait_for_text(emulator, record, "crashed")
            assert "not charged" in crashed.content
        refused = await refusal(emulator, await imagine(emulator, user, CRASH_PROMPT, steps=2,
                                                        seed=1))
        assert "made the image generator crash 2 times" in refused.content
        await assert_untouched(bot, user, before)


async def test_a_crash_in_a_batch_of_two_users_refunds_both(
        tmp_path, emulator: DiscordEmulator, engine: SharedEngine):
    async with running_bot(tmp_path, emulator, engine=engine) as bot:
        busy, culprit, bystander = (emulator.add_user(name=n) for n in ("rob", "sam", "tia"))
        balances = {user.id: await bot.ledger.touch(user.id) for user in (culprit, bystander)}
        running = await imagine(emulator, busy, steps=100)  # the others queue behind it
        running_message = await wait_for_text(emulator, running, "Generating")
        records = [await imagine(emulator, culprit, CRASH_PROMPT, steps=2, seed=3),
                   await imagine(emulator, bystander, "a cat", steps=2, seed=4)]
        for record in records:
            await wait_for_text(emulator, record, "Queued")
        await emulator.click(busy, running_message.id,
                             f"core:cancel:{job_id_of(running_message)}")
        for record in records:  # the bystander's own prompt is harmless: it shared the batch
            await wait_for_text(emulator, record, "crashed")
        for user in (culprit, bystander):
            await assert_untouched(bot, user, balances[user.id])
        # Once is no reason to refuse it; it runs alone this time, and works.
        again = await imagine(emulator, bystander, "a cat", steps=2, seed=4)
        await wait_for_result(emulator, again)


async def test_shutdown_completes_while_the_dispatcher_keeps_dying(
        tmp_path, emulator: DiscordEmulator, engine: SharedEngine, monkeypatch, caplog):
    user = emulator.add_user(name="uma")
    async with running_bot(tmp_path, emulator, engine=engine, shutdown_grace=5.0) as bot:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug in the dispatcher")

        monkeypatch.setattr(FairQueue, "pop_batch", broken)
        record = await imagine(emulator, user, steps=2)
        await wait_for_text(emulator, record, "Queued")
        for _ in range(200):
            if caplog.text.count("job-dispatcher died") >= 2:  # restarted, and died again
                break
            await asyncio.sleep(0.05)
        assert caplog.text.count("job-dispatcher died") >= 2
        await asyncio.wait_for(bot.close(), 30)
    monkeypatch.undo()
    async with running_bot(tmp_path, emulator, engine=engine):
        await wait_for_result(emulator, record)  # the job waited in the database


async def test_a_stopped_worker_is_replaced_and_its_job_refunded(
        tmp_path, emulator: DiscordEmulator, test_model: Path):
    async with running_bot(tmp_path, emulator, model=test_model, job_stall_seconds=3) as bot:
        user = emulator.add_user(name="vic")
        before = await bot.ledger.touch(user.id)
        record = await imagine(emulator, user, steps=100)
        await wait_for_text(emulator, record, "Generating")
        pid = bot.engine.client.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        stalled = await wait_for_text(emulator, record, "stopped responding")
        assert stalled.content == ("⚠️ The image generator stopped responding, so your job was "
                                   "stopped. You were not charged; please try again.")
        await assert_untouched(bot, user, before)
        await wait_for_result(emulator, await imagine(emulator, user, steps=2))
        assert bot.engine.client.worker_pid != pid
