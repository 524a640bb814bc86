"""Input files travel with a batch: the bot uploads what a job reads from its output folder (an
image prompt, an image to upscale or zoom into), and a worker with its own output folder puts
them in place, checked, before the job runs. Fast tests play the worker (or its GPU client);
the slow one runs a real ``imaginebot worker`` on an image prompt."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image
from redis.asyncio import Redis

from engine import image_prompt
from engine.dispatch import Dispatch
from engine.events import Done, EngineEvent, Failed
from engine.remote.connection import add, read_group
from engine.remote.engine import RedisEngine
from engine.remote.inputs import InputError, fetch_inputs, find_inputs
from engine.remote.protocol import (
    JOBS_GROUP,
    BatchJob,
    Input,
    Keys,
    batch_json,
    input_ref,
    parse_event,
)
from engine.remote.results import result_store
from engine.remote.worker import Worker
from engine.request import GenerationRequest
from engine.settings import EngineSettings
from tests.support.models import TinyModel
from tests.support.redis import shared_redis_url
from tests.test_remote_engine import ENTRY, TIMEOUT, ScriptedWorker

SHA = hashlib.sha256


@pytest.fixture
def settings(tmp_path: Path) -> EngineSettings:
    return EngineSettings(output_dir=tmp_path / "bot", lease_seconds=5.0, heartbeat_seconds=0.1,
                          redis_prefix=f"in-{uuid.uuid4().hex[:8]}")


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def upscale_of(path: Path, **fields: Any) -> GenerationRequest:
    return GenerationRequest(job_id="j1", prompt="a cat", model=ENTRY.name, operation="upscale",
                             params={"image_path": str(path), "scale": 2}, **fields)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- the bot's side -----------------------------------------------------------------------------

def test_only_files_inside_the_output_folder_are_inputs(tmp_path):
    out = tmp_path / "bot"
    image = write(out / "j0" / "0.png", b"image")
    secret = write(tmp_path / "secret.png", b"secret")
    (out / "escape.png").symlink_to(secret)
    request = GenerationRequest(prompt="x", params={
        "image_path": str(image), "outside": str(secret), "link": str(out / "escape.png"),
        "missing": str(out / "j0" / "9.png"), "relative": "j0/0.png", "prompt2": "a dog",
        "folder": str(out / "j0")})
    assert find_inputs(request, out) == [("image_path", image.resolve(), "j0/0.png")]


@pytest.mark.parametrize("kind", ["redis", "file"])
async def test_submit_uploads_inputs_beside_the_batch_never_inside_it(kind, redis, redis_url,
                                                                    settings, tmp_path):
    if kind == "file":
        settings = settings.model_copy(update={"result_store": f"file://{tmp_path}/shared"})
    out = settings.output_dir
    image = write(out / "j0" / "0.png", b"the image to upscale")
    digest = SHA(b"prompt image").hexdigest()
    write(out / "sources" / f"{digest}.png", b"prompt image")
    worker = ScriptedWorker(redis, Keys(settings.redis_prefix))
    await worker.register()
    engine = RedisEngine(settings, redis_url)
    await engine.start()
    try:
        await worker.offer()
        async with asyncio.timeout(TIMEOUT):
            slot = await engine.acquire_slot()
        request = upscale_of(image, source_image=digest)
        engine.submit([Dispatch(request, 3)], slot)
        _, (job,) = await worker.take()
    finally:
        await engine.close()
    assert job.request == request  # the bot's paths: the worker rewrites them
    assert job.inputs == (
        Input("image_path", "j0/0.png", input_ref("j1", 3, 0),
              SHA(b"the image to upscale").hexdigest()),
        Input("source_image", f"sources/{digest}.png", input_ref("j1", 3, 1), digest))
    store = result_store(settings.result_store, redis, Keys(settings.redis_prefix))
    assert await store.get(input_ref("j1", 3, 0)) == b"the image to upscale"
    assert await store.get(input_ref("j1", 3, 1)) == b"prompt image"
    if kind == "redis":  # expiring as results do
        assert await redis.ttl(Keys(settings.redis_prefix).result(input_ref("j1", 3, 0))) > 0
    entries = await redis.xrange(worker.stream)
    assert b"the image to upscale" not in entries[0][1][b"m"]


# -- the worker's side --------------------------------------------------------------------------

def getter(files: dict[str, bytes]) -> Callable[[str], Awaitable[bytes | None]]:
    async def get(ref: str) -> bytes | None:
        return files.get(ref)
    return get


def job_with(*inputs: Input, request: GenerationRequest | None = None) -> BatchJob:
    return BatchJob(request or upscale_of(Path("/bot/out/j0/0.png")), 1, inputs)


async def test_inputs_are_placed_under_the_workers_folder_and_params_point_there(tmp_path):
    digest = SHA(b"prompt").hexdigest()
    request = upscale_of(Path("/bot/out/j0/0.png"), source_image=digest)
    job = job_with(Input("image_path", "j0/0.png", input_ref("j1", 1, 0), SHA(b"img").hexdigest()),
                   Input("source_image", f"sources/{digest}.png", input_ref("j1", 1, 1), digest),
                   request=request)
    placed: list[Path] = []
    files = {input_ref("j1", 1, 0): b"img", input_ref("j1", 1, 1): b"prompt"}
    rewritten = await fetch_inputs(job, getter(files), tmp_path / "w", placed)
    path = (tmp_path / "w").resolve() / "j0" / "0.png"
    assert rewritten.params == {"image_path": str(path), "scale": 2}
    assert rewritten.source_image == digest  # the hash names the file: nothing to rewrite
    assert path.read_bytes() == b"img"
    assert image_prompt.source_path(tmp_path / "w", digest).read_bytes() == b"prompt"
    assert placed == [path, image_prompt.source_path(tmp_path / "w", digest).resolve()]
    assert not list((tmp_path / "w").rglob("*.partial"))


@pytest.mark.parametrize("relative", ["../evil.png", "/etc/evil.png", "j0/../../evil.png",
                                      "j0/../inside.png", "", ".", "a\0.png",
                                      "link/evil.png"])
async def test_a_path_out_of_the_workers_folder_is_refused(tmp_path, relative):
    root = tmp_path / "w"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    job = job_with(Input("image_path", relative, input_ref("j1", 1, 0), SHA(b"x").hexdigest()))
    with pytest.raises(InputError):
        await fetch_inputs(job, getter({input_ref("j1", 1, 0): b"x"}), root, [])
    assert not (tmp_path / "evil.png").exists()
    assert [path.name for path in root.iterdir()] == ["link"]


@pytest.mark.parametrize(("item", "files", "why"), [
    (Input("image_path", "j0/0.png", input_ref("j1", 1, 0), SHA(b"other").hexdigest()),
     {input_ref("j1", 1, 0): b"x"}, "sha256"),
    (Input("image_path", "j0/0.png", input_ref("j1", 1, 0), SHA(b"x").hexdigest()), {},
     "expired"),
    (Input("image_path", "j0/0.png", input_ref("j2", 1, 0), SHA(b"x").hexdigest()),
     {input_ref("j2", 1, 0): b"x"}, "not one of job j1"),
    (Input("scale", "j0/0.png", input_ref("j1", 1, 0), SHA(b"x").hexdigest()),
     {input_ref("j1", 1, 0): b"x"}, "none of its path params"),
    (Input("source_image", "j0/0.png", input_ref("j1", 1, 0), SHA(b"x").hexdigest()),
     {input_ref("j1", 1, 0): b"x"}, "image prompt it does not have"),
])
async def test_a_bad_input_is_refused_and_nothing_is_written(tmp_path, item, files, why):
    with pytest.raises(InputError, match=why):
        await fetch_inputs(job_with(item), getter(files), tmp_path / "w", [])
    assert not (tmp_path / "w" / "j0" / "0.png").exists()


class SeeingClient:
    """The worker's EngineClient, played: it notes each request and the file it names."""

    def __init__(self) -> None:
        self.seen: list[tuple[GenerationRequest, bytes]] = []

    def submit(self, request: GenerationRequest) -> AsyncIterator[EngineEvent]:
        self.seen.append((request, Path(request.params["image_path"]).read_bytes()))

        async def events() -> AsyncIterator[EngineEvent]:
            yield Failed(request.job_id, "seen", "error")
        return events()

    def together(self) -> contextlib.AbstractContextManager[None]:
        """Fakes run nothing in batches: submitting together changes nothing."""
        return contextlib.nullcontext()

    async def cancel(self, job_id: str) -> bool:
        return False


async def test_the_worker_runs_on_its_copy_and_fails_a_mismatch_as_invalid(
        redis, redis_url, settings, tmp_path):
    keys = Keys(settings.redis_prefix)
    store = result_store("redis", redis, keys)
    worker = Worker(settings.model_copy(update={"output_dir": tmp_path / "worker"}), redis_url,
                    "w1")
    client = SeeingClient()
    worker._client = client  # type: ignore[assignment]
    good = BatchJob(upscale_of(settings.output_dir / "j0" / "0.png"), 1, (
        Input("image_path", "j0/0.png", input_ref("j1", 1, 0), SHA(b"img").hexdigest()),))
    bad = BatchJob(upscale_of(settings.output_dir / "j0" / "1.png").model_copy(
        update={"job_id": "j2"}), 1, (
        Input("image_path", "j0/1.png", input_ref("j2", 1, 0), SHA(b"img").hexdigest()),))
    await store.put(input_ref("j1", 1, 0), b"img")
    await store.put(input_ref("j2", 1, 0), b"tampered")
    await add(redis, keys.jobs("w1"), {"m": batch_json([good, bad])})
    await redis.xgroup_create(keys.jobs("w1"), JOBS_GROUP, id="0")
    ((entry_id, fields),) = await read_group(redis, JOBS_GROUP, "w1", keys.jobs("w1"), count=1)
    scratch = worker._scratch  # the worker's engine's output folder
    try:
        await worker._run(entry_id.decode(), fields[b"m"])
        left = list(scratch.iterdir())
    finally:
        await worker._redis.aclose()
        shutil.rmtree(scratch, ignore_errors=True)

    ((request, data),) = client.seen
    assert request.job_id == "j1" and data == b"img"
    assert request.params["image_path"] == str(scratch.resolve() / "j0" / "0.png")
    assert left == []  # the input was removed after the batch
    assert await store.get(input_ref("j1", 1, 0)) is None  # fetched, then deleted
    ((_, last),) = await redis.xrevrange(keys.events("j2"), count=1)
    assert parse_event(last) == (1, Failed("j2", "this job's input file does not match its "
                                           "sha256", "invalid"))


# -- a real worker on another "host" ------------------------------------------------------------

@pytest.fixture
def worker_process(tiny_model: TinyModel, tmp_path: Path) -> Iterator[tuple[Path, str, Path]]:
    """A real worker whose output folder is not the bot's: (model, key prefix, its log)."""
    model = tiny_model("sd15")
    prefix = f"test-inputs-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "IMAGINEBOT_REDIS_PREFIX": prefix, "OMP_NUM_THREADS": "1",
           "IMAGINEBOT_LEASE_SECONDS": "10", "IMAGINEBOT_HEARTBEAT_SECONDS": "0.5",
           "IMAGINEBOT_DTYPE": "float32", "IMAGINEBOT_OUTPUT_DIR": str(tmp_path / "worker")}
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "worker", "--queue", shared_redis_url(),
             "--name", "w1", "--device", "cpu", "--models", str(model)],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    yield model, prefix, log
    process.kill()
    process.wait()


@pytest.mark.slow
async def test_an_image_prompt_runs_on_a_worker_with_its_own_output_folder(
        worker_process: tuple[Path, str, Path], tmp_path: Path):
    model, prefix, log = worker_process
    settings = EngineSettings(model=str(model), output_dir=tmp_path / "bot", lease_seconds=10,
                              heartbeat_seconds=0.5, redis_prefix=prefix)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    digest = image_prompt.prepare(buffer.getvalue(), 64, 64, settings.output_dir, 1 << 20)
    engine = RedisEngine(settings, shared_redis_url())
    await engine.start()
    try:
        async with asyncio.timeout(180):
            slot = await engine.acquire_slot()
            request = engine.validate(GenerationRequest(
                prompt="a red square", steps=2, count=1, seed=3, sampler="euler", width=64,
                height=64, source_image=digest, strength=0.5))
            (stream,) = engine.submit([Dispatch(request, 1)], slot)
            events = [event async for event in stream]
    finally:
        await engine.close()
    done = events[-1]
    assert isinstance(done, Done), (events, log.read_text(errors="replace")[-3000:])
    assert Image.open(done.images[0].path).size == (64, 64)
