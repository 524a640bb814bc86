"""Pipeline hygiene keeps the output bitwise: uint8 conversion on the device, PNGs written off
the GPU thread at any zlib level, previews rendered off it, and every job's events in order."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from engine import runner as runner_module
from engine.errors import JobCancelled
from engine.events import Done, Failed, Progress
from engine.outputs import PARAMETERS_KEY, read_parameters, save_png
from engine.previews import HostLatents, Preview, preview_image
from engine.request import GenerationRequest, validate_request
from engine.runner import Runner, RunOutput, pil_images
from engine.samplers import make_scheduler
from engine.settings import EngineSettings
from engine.worker import Inbox, Outbox, WorkerMessage, encode_preview, run_batch

PROMPT = "a red fox in the snow"


# -- the uint8 conversion ----------------------------------------------------------------------

def _every_value_in_0_1(dtype: torch.dtype) -> torch.Tensor:
    """Every value of a 16-bit float type in [0, 1], as (N, 3, 8, 8) images: halves of x * 255
    included, where a conversion that truncates or rounds half up differs."""
    bits = torch.arange(0, 2 ** 16, dtype=torch.int32).to(torch.int16).view(dtype)
    values = bits[(bits >= 0) & (bits <= 1)]
    values = torch.cat([values, values[: (-len(values)) % 192]])
    return values.reshape(-1, 3, 8, 8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_pil_images_are_bitwise_what_diffusers_output_type_pil_makes(dtype):
    if dtype == torch.float32:
        images = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        images[0] = torch.arange(192).reshape(3, 8, 8) / 255 + 0.5 / 255  # halves, nearly
    else:
        images = _every_value_in_0_1(dtype)
    ours = [np.asarray(image) for image in pil_images(images)]
    # diffusers' own path for output_type="pil", from the same "pt" tensor
    theirs = [np.asarray(image) for image in VaeImageProcessor.numpy_to_pil(
        VaeImageProcessor.pt_to_numpy(images))]
    assert len(ours) == len(theirs) == images.shape[0]
    for mine, expected in zip(ours, theirs, strict=True):
        assert mine.dtype == np.uint8 and mine.shape == expected.shape
        assert np.array_equal(mine, expected)


@pytest.fixture(scope="module")
def warm(tiny_model, tmp_path_factory):
    """A Runner and a plain diffusers pipeline per family, loaded once for the module."""
    cache: dict[str, tuple[EngineSettings, Runner, Any]] = {}

    def get(family: str) -> tuple[EngineSettings, Runner, Any]:
        if family not in cache:
            folder = tiny_model(family)
            plain = DiffusionPipeline.from_pretrained(folder)
            plain.set_progress_bar_config(disable=True)
            settings = EngineSettings(model=str(folder), preview_every=2, device="cpu",
                                      output_dir=tmp_path_factory.mktemp("outputs"))
            cache[family] = (settings, Runner(settings), plain)
        return cache[family]

    return get


@pytest.mark.parametrize(("family", "sampler"), [("sd15", "euler_a"), ("flux", "flow_euler")])
def test_one_image_is_bitwise_plain_diffusers_output_type_pil(warm, one_thread, family, sampler):
    settings, runner, plain = warm(family)
    request = validate_request(GenerationRequest(
        prompt=PROMPT, seed=77, count=1, sampler=sampler, steps=3), settings)
    (ours,) = runner.txt2img([request], lambda *_: None, lambda: False)[0].images
    original = plain.scheduler
    plain.scheduler = make_scheduler(sampler, original.config, (sampler,))
    try:
        (theirs,) = plain(PROMPT, height=request.height, width=request.width,
                          num_inference_steps=3, guidance_scale=request.cfg,
                          generator=torch.Generator("cpu").manual_seed(77),
                          output_type="pil").images
    finally:
        plain.scheduler = original
    assert ours.mode == theirs.mode == "RGB" and ours.size == theirs.size
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))  # not within 1: equal


# -- PNG files ---------------------------------------------------------------------------------

def _gradient() -> Image.Image:
    x = np.linspace(0, 255, 96, dtype=np.float32)
    rgb = np.stack([np.add.outer(x, x) / 2, np.add.outer(x, -x) / 2 + 128,
                    np.tile(x, (96, 1))], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def test_png_compression_keeps_pixels_and_parameters_and_changes_only_the_size(tmp_path):
    image, parameters = _gradient(), "a fox\nSteps: 2, Seed: 1"
    paths = {level: save_png(image, tmp_path / f"{level}.png", parameters, level)
             for level in (0, 6, 9)}
    sizes = {level: path.stat().st_size for level, path in paths.items()}
    assert sizes[0] > sizes[6] >= sizes[9]
    for path in paths.values():
        with Image.open(path) as saved:
            assert np.array_equal(np.asarray(saved), np.asarray(image))
        assert read_parameters(path) == parameters
    # level 6 is zlib's default: the very bytes Pillow writes when given no level
    default = io.BytesIO()
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    image.save(default, format="PNG", pnginfo=info)
    assert paths[6].read_bytes() == default.getvalue()


# -- the worker's events -----------------------------------------------------------------------

class Pipe:
    """The event pipe's sending end: keeps what was sent, and the files of a Done that were
    missing or incomplete at the moment it was sent."""

    def __init__(self) -> None:
        self.sent: list[WorkerMessage] = []
        self.unwritten: list[Path | None] = []
        self.lock = threading.Lock()

    def send(self, message: WorkerMessage) -> None:
        if isinstance(message, Done):
            for path in [image.path for image in message.images] + [message.grid]:
                try:
                    with Image.open(path or "") as png:
                        png.load()
                except OSError:  # missing (or no grid), or half-written
                    self.unwritten.append(path)
        with self.lock:
            self.sent.append(message)

    def of(self, job_id: str) -> list[WorkerMessage]:
        return [m for m in self.sent if getattr(m, "job_id", None) == job_id]


@dataclass(frozen=True)
class SlowPreview(Preview):
    """A preview whose rendering takes a while (the earlier, the longer), so that later events
    overtake it unless they are held."""

    delay: float = 0.0

    def image(self) -> Image.Image:
        time.sleep(self.delay)
        return super().image()


class StepRunner:
    """Makes ``steps`` steps with a slow preview on every other one, then two images per job;
    ``after_step(step)`` runs after each step is reported."""

    def __init__(self, settings: EngineSettings, steps: int,
                 after_step: Callable[[int], None] = lambda step: None) -> None:
        self.settings, self.steps, self.after_step = settings, steps, after_step

    def txt2img(self, batch: list[GenerationRequest], progress: object,
                cancelled: Callable[[], bool], *,
                batch_progress: Callable[[int, int, dict[str, Preview]], None],
                ) -> list[RunOutput]:
        host = HostLatents(torch.zeros(2 * len(batch), 4, 4, 4))
        for step in range(1, self.steps + 1):
            if cancelled():
                raise JobCancelled
            delay = 0.03 * (self.steps - step)
            previews = {request.job_id: SlowPreview(host, 2 * i, 2 * i + 2, "sd15", delay)
                        for i, request in enumerate(batch)} if step % 2 == 0 else {}
            batch_progress(step, self.steps, previews)
            self.after_step(step)
        image = Image.new("RGB", (8, 8), (10, 20, 30))
        return [RunOutput([image, image], [1, 2], {"model": "m"}) for _ in batch]


def _requests(count: int) -> list[GenerationRequest]:
    return [GenerationRequest(prompt="x", model="m", width=8, height=8, steps=2,
                              sampler="euler", cfg=5.0, count=2, seed=1) for _ in range(count)]


def _steps(messages: list[WorkerMessage]) -> list[int]:
    return [m.step for m in messages if isinstance(m, Progress)]


def test_each_jobs_progress_stays_in_order_and_done_comes_after_its_files(tmp_path):
    pipe = Pipe()
    outbox = Outbox(pipe)  # a Connection only needs send() here
    settings = EngineSettings(output_dir=tmp_path, device="cpu", png_compression=1)
    batch = _requests(2)
    run_batch(StepRunner(settings, 6), batch, Inbox(4), outbox)
    outbox.close()
    assert pipe.unwritten == []
    for request in batch:
        events = pipe.of(request.job_id)
        assert _steps(events) == [1, 2, 3, 4, 5, 6]
        assert sum(isinstance(e, Done | Failed) for e in events) == 1
        previews = [e for e in events if isinstance(e, Progress) and e.preview]
        assert [e.step for e in previews] == [2, 4, 6]
        done = events[-1]
        assert isinstance(done, Done) and done.grid is not None
        assert read_parameters(done.grid) is not None


def test_a_cancel_or_a_failed_write_ends_a_job_after_its_pending_previews(tmp_path):
    pipe = Pipe()
    outbox = Outbox(pipe)
    inbox = Inbox(4)  # two jobs of two images
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the job folder cannot be made under a file
    settings = EngineSettings(output_dir=blocked, device="cpu")
    batch = _requests(2)
    inbox.add(batch)
    assert inbox.take() == batch

    def cancel_first(step: int) -> None:
        if step == 3:
            inbox.cancel(batch[0].job_id)

    run_batch(StepRunner(settings, 4, cancel_first), batch, inbox, outbox)
    outbox.close()
    cancelled, failed_write = pipe.of(batch[0].job_id), pipe.of(batch[1].job_id)
    assert _steps(cancelled) == [1, 2, 3] and cancelled[1].preview
    assert isinstance(cancelled[-1], Failed) and cancelled[-1].kind == "cancelled"
    assert _steps(failed_write) == [1, 2, 3, 4]
    assert isinstance(failed_write[-1], Failed)
    assert failed_write[-1].reason.startswith("could not save images")


def test_previews_come_every_n_steps_with_the_pixels_rendered_at_the_step(warm, one_thread,
                                                                           monkeypatch):
    """What the worker sends is preview_image of the x0 the step made, as before previews
    moved off the GPU thread: the spy renders it at the step, from the tensor itself."""
    settings, runner, _ = warm("sd15")
    direct: list[Image.Image] = []

    class Spy(HostLatents):
        def __init__(self, latents: torch.Tensor) -> None:
            direct.append(preview_image(latents, "sd15"))
            super().__init__(latents)

    monkeypatch.setattr(runner_module, "HostLatents", Spy)
    request = validate_request(GenerationRequest(
        prompt=PROMPT, seed=5, count=2, sampler="dpmpp_2m", steps=5), settings)
    pipe = Pipe()
    outbox = Outbox(pipe)
    run_batch(runner, [request], Inbox(1), outbox)
    outbox.close()
    assert pipe.unwritten == []
    events = pipe.of(request.job_id)
    assert _steps(events) == [1, 2, 3, 4, 5] and isinstance(events[-1], Done)
    shown = [(e.step, e.preview) for e in events if isinstance(e, Progress) and e.preview]
    assert [step for step, _ in shown] == [2, 4] and len(direct) == 2
    for (_, data), expected in zip(shown, direct, strict=True):
        assert data == encode_preview(expected)
        with Image.open(io.BytesIO(data)) as png:
            assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(expected))
    assert all(Path(image.path).is_file() for image in events[-1].images)
