"""The stall watchdog: a silent worker is killed and replaced; a slow but alive one is not.

A real worker process runs the operations of tests/support/stall_ops.py with a stall limit of
1 s. The model-load limit stays long here because it also bounds the worker's start-up, which
takes seconds on a busy machine; the test of a load past its limit lowers it once the worker is up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from engine.client import EngineClient
from engine.errors import EngineStartError
from engine.events import Done, EngineEvent, Failed, Progress
from engine.request import GenerationRequest
from engine.settings import EngineSettings
from tests.support.models import TinyModel

pytestmark = pytest.mark.asyncio(loop_scope="module")

STALL = 1.0
LOAD = 60.0
TIMEOUT = 120


def engine_settings(model: Path, output_dir: Path, **limits: float) -> EngineSettings:
    return EngineSettings(model=str(model), device="cpu", dtype="float32", output_dir=output_dir,
                          **limits)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory,
                 ) -> AsyncIterator[EngineClient]:
    settings = engine_settings(tiny_model("sd15"), tmp_path_factory.mktemp("outputs"),
                               job_stall_seconds=STALL, model_load_seconds=LOAD)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")  # inherited by every worker the client starts
        async with EngineClient(settings, operation_modules=["tests.support.stall_ops"]) as c:
            yield c


def slow_steps(steps: int, pause: float) -> GenerationRequest:
    return GenerationRequest(prompt="x", count=1, width=64, height=64,
                             operation="test_slow_steps", params={"steps": steps, "pause": pause})


def slow_load(model: Path, warmup: float) -> GenerationRequest:
    return GenerationRequest(prompt="x", count=1, width=64, height=64,
                             operation="test_slow_load",
                             params={"model": str(model), "warmup": warmup})


def fresh_model(tiny_model: TinyModel, folder: Path) -> Path:
    """A copy of the tiny model that no worker has loaded yet."""
    return Path(shutil.copytree(tiny_model("sd15"), folder))


async def collect(stream: AsyncIterator[EngineEvent]) -> list[EngineEvent]:
    async with asyncio.timeout(TIMEOUT):
        return [event async for event in stream]


def kill_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "engine.client" and record.levelno == logging.ERROR
            and "killing it" in record.getMessage()]


async def test_a_slow_worker_that_reports_every_step_is_not_killed(client):
    kills, pid = client.stall_kills, client.worker_pid
    # Longer than the stall limit in all, but never silent for more than a fifth of it.
    slow = slow_steps(6, STALL / 5)
    # Waits inside the worker behind it, longer than the stall limit, with no events of its own.
    behind = slow_steps(1, 0.0)
    results = await asyncio.gather(collect(client.submit(slow)), collect(client.submit(behind)))
    assert [type(events[-1]) for events in results] == [Done, Done]
    assert sum(isinstance(event, Progress) for event in results[0]) == 6
    assert client.stall_kills == kills and client.worker_pid == pid


@pytest.mark.slow  # starts a fresh worker
async def test_a_stopped_worker_is_killed_its_jobs_fail_and_a_fresh_worker_takes_over(
        client, caplog):
    kills, crashes = client.stall_kills, client.crashes
    running, waiting = slow_steps(100_000, 0.01), slow_steps(1, 0.0)
    running_stream = client.submit(running)
    waiting_events = asyncio.ensure_future(collect(client.submit(waiting)))
    old_pid = client.worker_pid
    assert old_pid is not None
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT):
        async for event in running_stream:
            if isinstance(event, Progress):
                os.kill(old_pid, signal.SIGSTOP)
                stopped = loop.time()
                break
        rest = [event async for event in running_stream]
    assert STALL - 0.5 < loop.time() - stopped < STALL + 10
    for end in (rest[-1], (await waiting_events)[-1]):
        assert isinstance(end, Failed) and end.kind == "stalled"
        assert end.reason == "the image generator stopped responding for 1 s"
    assert client.stall_kills == kills + 1 and client.crashes == crashes
    (logged,) = kill_logs(caplog)
    assert running.job_id in logged and waiting.job_id in logged and "for 1 s" in logged

    after = (await collect(client.submit(slow_steps(1, 0.0))))[-1]
    assert isinstance(after, Done)
    assert client.worker_pid not in (None, old_pid)
    with pytest.raises(ProcessLookupError):  # killed and reaped, although it was stopped
        os.kill(old_pid, 0)


async def test_a_model_load_may_be_silent_for_longer_than_the_stall_limit(
        client, tiny_model, tmp_path):
    kills, pid = client.stall_kills, client.worker_pid
    job = slow_load(fresh_model(tiny_model, tmp_path / "model"), warmup=STALL + 0.5)
    assert isinstance((await collect(client.submit(job)))[-1], Done)
    assert client.stall_kills == kills and client.worker_pid == pid


@pytest.mark.slow  # starts a fresh worker
async def test_a_load_past_the_load_limit_is_killed(client, tiny_model, tmp_path, caplog):
    kills = client.stall_kills
    job = slow_load(fresh_model(tiny_model, tmp_path / "model"), warmup=TIMEOUT)
    # The client reads its limits whenever it sets its timer; the fresh worker it starts after
    # the kill gets the long limit back for its start-up.
    client.settings.model_load_seconds = 2 * STALL
    try:
        end = (await collect(client.submit(job)))[-1]
    finally:
        client.settings.model_load_seconds = LOAD
    assert isinstance(end, Failed) and end.kind == "stalled"
    assert end.reason == "the image generator stopped responding for 2 s"
    assert client.stall_kills == kills + 1
    (logged,) = kill_logs(caplog)
    assert "while loading tiny-sd15" in logged and job.job_id in logged
    assert isinstance((await collect(client.submit(slow_steps(1, 0.0))))[-1], Done)


async def test_a_worker_that_hangs_during_start_up_is_killed(tiny_model, tmp_path):
    engine = EngineClient(engine_settings(tiny_model("sd15"), tmp_path, model_load_seconds=2),
                          operation_modules=["tests.support.hang_on_import"])
    with pytest.raises(EngineStartError, match="did not start within 2 s"):
        async with asyncio.timeout(TIMEOUT):
            await engine.start()
    assert engine.stall_kills == 1 and engine.worker_pid is None
