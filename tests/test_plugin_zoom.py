"""The zoom plugin: its canvas geometry, what a click asks for and costs, and the "zoom" engine
operation run in-process on the tiny SD1.5 model against plain diffusers.

Clicks through Discord run in tests/test_plugin_zoom_bot.py.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInpaintPipeline
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from bot.plugin_api import CheckFailure, JobView, cost_for
from bot.settings import Settings
from engine.operations import JobCancelled, OperationContext, get_operation
from engine.outputs import a1111_parameters, parse_parameters
from engine.request import GenerationRequest, RequestError, validate_request
from engine.runner import Runner
from engine.settings import EngineSettings
from plugins.zoom import (  # engine_ops registers the operation and its PNG fields
    DIRECTIONS,
    OPERATION,
    PAN_FACTOR,
    ZOOM_FACTORS,
    engine_ops,  # noqa: F401
)
from plugins.zoom.buttons import zoom_request, zoomable
from plugins.zoom.geometry import SIZE_MULTIPLE, Plan, box_size, fit, keep_source, place, plan
from plugins.zoom.move import Move, digest
from plugins.zoom.pricing import zoom_price

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models, in this process

PROMPT = "a lighthouse on a cliff"
NEGATIVE = "blurry"
SEED = 4321
SOURCE = 64  # an upscaled image of the tiny model (32 pixels native)


# -- geometry ---------------------------------------------------------------------------------

sides = st.integers(16, 2048)
limits = st.integers(64 * 64, 2048 * 2048)
moves = st.sampled_from([("out", f) for f in ZOOM_FACTORS]
                        + [(d, PAN_FACTOR) for d in DIRECTIONS if d != "out"])


@given(sides, sides, limits)
def test_fit_stays_within_the_limit_in_whole_multiples(width: int, height: int, limit: int):
    fitted = fit(width, height, limit)
    assert fitted[0] * fitted[1] <= limit
    assert all(side % SIZE_MULTIPLE == 0 and side >= SIZE_MULTIPLE for side in fitted)
    if width * height <= limit and width % SIZE_MULTIPLE == height % SIZE_MULTIPLE == 0:
        assert fitted == (width, height)  # a size that fits is kept as it is


@given(sides, sides, limits, moves)
def test_the_box_is_inside_the_output_where_the_move_puts_it(width: int, height: int,
                                                              limit: int, move: Any):
    direction, factor = move
    placed = plan((width, height), direction, factor, limit)
    out_w, out_h = placed.size
    left, top, right, bottom = placed.box
    assert out_w * out_h <= limit and out_w % SIZE_MULTIPLE == out_h % SIZE_MULTIPLE == 0
    assert 0 <= left < right <= out_w and 0 <= top < bottom <= out_h
    box_w, box_h = box_size(placed.box)
    if direction == "out":
        # centred, 1/factor of the output on each axis, to the pixel
        assert abs(left - (out_w - right)) <= 1 and abs(top - (out_h - bottom)) <= 1
        assert abs(box_w - out_w / factor) <= 1 and abs(box_h - out_h / factor) <= 1
        assert (out_w, out_h) == fit(width, height, limit)  # the source's own size
        return
    # A pan: the image keeps three edges; the new strip is (factor - 1) / factor of its axis.
    horizontal = direction in ("left", "right")
    along, strip = (out_w, out_w - box_w) if horizontal else (out_h, out_h - box_h)
    assert abs(strip - along * (factor - 1) / factor) <= 1
    assert (box_h == out_h) if horizontal else (box_w == out_w)
    kept_edge = {"left": right == out_w, "right": left == 0, "up": bottom == out_h,
                 "down": top == 0}
    assert kept_edge[direction]


def test_a_pan_grows_the_image_and_zoom_keeps_its_size():
    limit = 1536 * 1024
    assert plan((1024, 1024), "out", 2.0, limit) == Plan((1024, 1024), (256, 256, 768, 768))
    assert plan((1024, 1024), "out", 1.5, limit).box == (171, 171, 853, 853)
    assert plan((1024, 1024), "right", 1.5, limit) == Plan((1536, 1024), (0, 0, 1024, 1024))
    assert plan((1024, 1024), "up", 1.5, limit) == Plan((1024, 1536), (0, 512, 1024, 1536))
    # Past the limit the whole canvas shrinks, keeping its aspect ratio.
    wide = plan((1536, 1024), "left", 1.5, limit)
    assert wide == Plan((1872, 832), (624, 0, 1872, 832))


@given(st.integers(16, 96), st.integers(16, 96), moves, st.randoms(use_true_random=False))
def test_the_mask_is_exactly_what_lies_outside_the_box(width: int, height: int, move: Any,
                                                       rng: Any):
    direction, factor = move
    placed = plan((width, height), direction, factor, 192 * 192)
    # Noise from a seed Hypothesis draws (its own randbytes of this size is too big to shrink).
    noise = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (height, width, 3))
    source = Image.fromarray(noise.astype(np.uint8))
    canvas, mask = place(source, placed)
    inside = np.zeros(placed.size[::-1], dtype=bool)
    left, top, right, bottom = placed.box
    inside[top:bottom, left:right] = True
    assert np.array_equal(np.asarray(mask) == 0, inside)
    assert np.array_equal(np.asarray(mask) == 255, ~inside)
    fitted = source.resize(box_size(placed.box), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(canvas.crop(placed.box)), np.asarray(fitted))
    # Whatever the pipeline paints inside the box, the source's pixels come back.
    painted = Image.new("RGB", placed.size, "red")
    kept = np.asarray(keep_source(painted, canvas, placed))
    assert np.array_equal(kept[inside], np.asarray(canvas)[inside])
    assert (kept[~inside] == (255, 0, 0)).all()


# -- what a click asks for ---------------------------------------------------------------------

def as_job(request: GenerationRequest, path: Path, kind: str = "upscale") -> JobView:
    return JobView(id="c" * 32, kind=kind, owner_id=1, request=request, image_paths=(path,),
                   seeds=(request.seed or 0,), image_count=1, parent_job_id="p" * 32,
                   created_at=datetime(2025, 1, 1, tzinfo=UTC))


def upscaled(folder: Path, scale: int = 2) -> JobView:
    """A finished U1 result: the count-1 request of a 32x32 grid image, scaled ``scale``x."""
    path = folder / "0.png"
    Image.new("RGB", (32 * scale, 32 * scale), "navy").save(path)
    request = GenerationRequest(prompt=PROMPT, seed=SEED, count=1, width=32, height=32,
                                steps=3, cfg=5.0, sampler="euler", variation_seed=9,
                                variation_strength=0.25, operation="upscale",
                                params={"scale": scale, "image_path": str(path),
                                        "strength": 0.35})
    return as_job(request, path)


def test_a_zoom_request_records_the_move_and_its_source(tmp_path: Path):
    job = upscaled(tmp_path)
    request = zoom_request(job, 0, "out", 2.0, limit=1536 * 1024, inpaint_model=None)
    data = job.image_paths[0].read_bytes()
    assert request.params == {"direction": "out", "factor": 2.0,
                              "image_path": str(job.image_paths[0]),
                              "image_sha256": digest(data), "box": [16, 16, 48, 48]}
    assert (request.operation, request.width, request.height, request.count) == (
        OPERATION, 64, 64, 1)
    # A fresh seed; the prompt and the sampler settings of the source.
    assert request.seed is None and request.variation_seed is None
    assert (request.prompt, request.steps, request.cfg, request.sampler) == (
        PROMPT, 3, 5.0, "euler")
    pan = zoom_request(job, 0, "down", PAN_FACTOR, limit=1536 * 1024, inpaint_model="/m/inp")
    assert (pan.width, pan.height, pan.params["box"]) == (64, 96, [0, 0, 64, 64])
    assert pan.params["inpaint_model"] == "/m/inp"


def test_a_zoom_of_a_deleted_image_is_refused_before_anything_is_charged(tmp_path: Path):
    job = upscaled(tmp_path)
    job.image_paths[0].unlink()
    with pytest.raises(CheckFailure, match="no longer on the server"):
        zoom_request(job, 0, "out", 2.0, limit=1536 * 1024, inpaint_model=None)


def test_the_buttons_show_on_u1_to_u4_results_and_on_zoomed_images(tmp_path: Path):
    job = upscaled(tmp_path)
    assert zoomable(None, job)  # type: ignore[arg-type]  # the check reads only the job
    assert not zoomable(None, upscaled(tmp_path, scale=4))  # type: ignore[arg-type]
    grid = dataclasses.replace(job, kind="imagine", request=job.request.model_copy(
        update={"operation": "txt2img", "params": {}}))
    assert not zoomable(None, grid)  # type: ignore[arg-type]
    zoomed = zoom_request(job, 0, "out", 2.0, limit=1536 * 1024, inpaint_model=None)
    assert zoomable(None, as_job(zoomed, job.image_paths[0], kind="zoom"))  # type: ignore[arg-type]


def test_a_zoom_costs_a_generation_of_its_output(tmp_path: Path):
    bot = SimpleNamespace(settings=Settings(price_per_image=3, price_base_pixels=64 * 64,
                                            price_base_steps=3))
    job = upscaled(tmp_path)
    out = zoom_request(job, 0, "out", 2.0, limit=1536 * 1024, inpaint_model=None)
    pan = zoom_request(job, 0, "left", PAN_FACTOR, limit=1536 * 1024, inpaint_model=None)
    assert zoom_price(bot, out) == 3  # type: ignore[arg-type]
    # 96x64 at 3 steps: 1.5 base images, rounded up.
    assert zoom_price(bot, pan) == cost_for(bot.settings, 96, 64, 3, 1) == 5  # type: ignore[arg-type]


@pytest.mark.parametrize(("params", "field"), [
    ({"direction": "sideways"}, "direction"),
    ({"factor": 3.0}, "factor"),
    ({"factor": True}, "factor"),
    ({"image_sha256": "abc"}, "image_sha256"),
    ({"box": [0, 0, 65, 64]}, "box"),
    ({"box": [10, 10, 10, 20]}, "box"),
    ({"box": [0, 0, 64]}, "box"),
    ({"inpaint_model": 7}, "inpaint_model"),
])
def test_bad_params_are_refused_with_one_sentence(params: dict[str, Any], field: str):
    good = Move("out", 2.0, "/out/0.png", "0" * 64, (16, 16, 48, 48)).params()
    request = GenerationRequest(prompt="x", width=64, height=64, operation=OPERATION,
                                params=good | params)
    with pytest.raises(RequestError) as error:
        Move.of(request)
    assert error.value.field == field


# -- the engine operation ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def runner(test_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    return Runner(EngineSettings(model=str(test_model), device="cpu", dtype="float32",
                                 preview_every=0, output_dir=tmp_path_factory.mktemp("out")))


@pytest.fixture(scope="module")
def source(runner: Runner) -> Path:
    """An "upscaled" image in the engine's outputs: a tiny-model image, enlarged."""
    raw = GenerationRequest(prompt=PROMPT, seed=SEED, count=1, steps=2, sampler="euler")
    (image,) = runner.txt2img([validate_request(raw, runner.settings)], lambda *a: None,
                              lambda: False)[0].images
    path = runner.settings.output_dir / "source" / "0.png"
    path.parent.mkdir(exist_ok=True)
    image.resize((SOURCE, SOURCE), Image.Resampling.LANCZOS).save(path)
    return path


class Recorder:
    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []

    def progress(self, step: int, total: int, preview: Any) -> None:
        self.steps.append((step, total))


def zoom_of(runner: Runner, path: Path, seed: int = SEED, *, inpaint_model: str | None = None,
            ) -> GenerationRequest:
    """The Zoom Out 2x of ``path`` (64x64: the box is its middle 32x32)."""
    move = Move("out", 2.0, str(path), digest(path.read_bytes()), (16, 16, 48, 48),
                inpaint_model)
    raw = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=seed, count=1,
                            steps=3, cfg=6.0, sampler="euler_a", width=SOURCE, height=SOURCE,
                            operation=OPERATION, params=move.params())
    return validate_request(raw, runner.settings)


def run_zoom(runner: Runner, request: GenerationRequest,
             recorder: Recorder | None = None) -> Image.Image:
    recorder = recorder or Recorder()
    ctx = OperationContext(runner, recorder.progress, lambda: False)
    (image,) = get_operation(OPERATION)(ctx, request)
    return image


def plain_inpainting(folder: Path, path: Path, seed: int, *, pipe: Any = None,
                     prompt: str = PROMPT) -> Image.Image:
    """Diffusers' own inpainting pipeline on the canvas, written out here independently."""
    if pipe is None:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, safety_checker=None,
                                                              requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    middle = Image.open(path).convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (SOURCE, SOURCE), (127, 127, 127))
    canvas.paste(middle, (16, 16))
    mask = Image.new("L", (SOURCE, SOURCE), 255)
    mask.paste(0, (16, 16, 48, 48))
    image = pipe(prompt=[prompt], negative_prompt=[NEGATIVE], image=canvas, mask_image=mask,
                 strength=1.0, width=SOURCE, height=SOURCE, num_inference_steps=3,
                 guidance_scale=6.0,
                 generator=[torch.Generator("cpu").manual_seed(seed)]).images[0]
    image.paste(middle, (16, 16))  # the plugin keeps the source's own pixels
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_zoom_out_equals_plain_diffusers_inpainting(runner: Runner, source: Path,
                                                    test_model: Path):
    recorder = Recorder()
    zoomed = run_zoom(runner, zoom_of(runner, source), recorder)
    expected = plain_inpainting(test_model, source, SEED)
    assert zoomed.size == (SOURCE, SOURCE)
    assert np.abs(pixels(zoomed) - pixels(expected)).max() <= 1
    assert recorder.steps == [(1, 3), (2, 3), (3, 3)]
    # The comparison can fail: another seed paints another border.
    other = run_zoom(runner, zoom_of(runner, source, SEED + 1))
    assert np.abs(pixels(other) - pixels(expected)).max() > 1
    assert np.array_equal(pixels(other)[16:48, 16:48], pixels(expected)[16:48, 16:48])


def test_cancelling_stops_between_steps(runner: Runner, source: Path):
    steps: list[int] = []

    def progress(step: int, total: int, preview: Any) -> None:
        steps.append(step)

    ctx = OperationContext(runner, progress, lambda: bool(steps))
    with pytest.raises(JobCancelled):
        get_operation(OPERATION)(ctx, zoom_of(runner, source))
    assert steps == [1]


def test_a_changed_or_foreign_source_is_refused(runner: Runner, source: Path, tmp_path: Path):
    request = zoom_of(runner, source)
    copy = runner.settings.output_dir / "source" / "copy.png"
    copy.write_bytes(source.read_bytes() + b"\0")  # other bytes, other hash
    outside = tmp_path / "0.png"
    outside.write_bytes(source.read_bytes())  # the same bytes, outside the outputs
    for path in (copy, outside):
        moved = request.model_copy(update={"params": request.params | {"image_path": str(path)}})
        with pytest.raises(RequestError, match="no longer on the server, or has changed"):
            run_zoom(runner, moved)


def test_the_png_parameters_record_the_move(runner: Runner, source: Path):
    request = zoom_of(runner, source)
    text = a1111_parameters(request, SEED, {"model": "tiny-sd15"})
    parsed = parse_parameters(text)
    assert parsed["Zoom out"] == "2"
    assert parsed["Outpaint mask"] == "outside 32x32+16+16"
    assert parsed["Source image hash"] == digest(source.read_bytes())
    assert (parsed["width"], parsed["height"], parsed["seed"]) == (SOURCE, SOURCE, SEED)
    pan = request.model_copy(update={"params": request.params | {
        "direction": "left", "factor": PAN_FACTOR, "inpaint_model": "/models/inpaint-v1"}})
    parsed = parse_parameters(a1111_parameters(pan, SEED, {}))
    assert (parsed["Pan"], parsed["Inpaint model"]) == ("left 1.5", "inpaint-v1")


def unet_lora(pipe: Any) -> dict[str, torch.Tensor]:
    """A random rank-4 LoRA (diffusers/peft keys) on the UNet's attention projections."""
    generator = torch.Generator().manual_seed(7)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in pipe.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(("to_q", "to_k", "to_v")):
            tensors[f"unet.{name}.lora_A.weight"] = torch.randn(
                4, module.in_features, generator=generator) * 0.3
            tensors[f"unet.{name}.lora_B.weight"] = torch.randn(
                module.out_features, 4, generator=generator) * 0.3
    return tensors


def test_the_prompt_is_read_as_txt2img_reads_it_lora_included(
        runner: Runner, source: Path, test_model: Path, tmp_path: Path):
    from safetensors.torch import save_file

    pipe = StableDiffusionInpaintPipeline.from_pretrained(test_model, safety_checker=None,
                                                          requires_safety_checker=False)
    (tmp_path / "loras").mkdir()
    save_file(unet_lora(pipe), str(tmp_path / "loras" / "style.safetensors"))
    settings = runner.settings.model_copy(update={"lora_dir": tmp_path / "loras"})
    own = Runner(settings)
    plain = zoom_of(own, source)
    tagged = validate_request(plain.model_copy(update={
        "prompt": f"{PROMPT} <lora:style:0.8>"}), settings)
    zoomed = run_zoom(own, tagged)
    pipe.load_lora_weights(str(tmp_path / "loras" / "style.safetensors"), adapter_name="style")
    pipe.set_adapters(["style"], [0.8])
    # The tag is not text: the prompt is what precedes it, as txt2img reads it.
    expected = plain_inpainting(test_model, source, SEED, pipe=pipe, prompt=f"{PROMPT} ")
    assert np.abs(pixels(zoomed) - pixels(expected)).max() <= 1
    assert np.abs(pixels(run_zoom(own, plain)) - pixels(zoomed)).max() > 1  # the LoRA acted


# -- an inpainting checkpoint -------------------------------------------------------------------

@pytest.fixture(scope="module")
def inpaint_model(test_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD1.5 model with a 9-channel (inpainting) UNet, as a diffusers folder."""
    from diffusers import UNet2DConditionModel

    base = StableDiffusionInpaintPipeline.from_pretrained(test_model, safety_checker=None,
                                                          requires_safety_checker=False)
    config = dict(base.unet.config) | {"in_channels": 9}
    torch.manual_seed(1)
    base.unet = UNet2DConditionModel.from_config(config)
    folder = tmp_path_factory.mktemp("tiny-sd15-inpainting")
    base.save_pretrained(folder)
    (folder / "imaginebot.json").write_text((test_model / "imaginebot.json").read_text())
    return folder


def test_a_configured_inpainting_checkpoint_paints_instead(
        runner: Runner, source: Path, inpaint_model: Path, test_model: Path,
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("IMAGINEBOT_ZOOM_INPAINT_MODEL", str(inpaint_model))
    own = Runner(runner.settings)  # a worker started with the setting
    zoomed = run_zoom(own, zoom_of(own, source, inpaint_model=str(inpaint_model)))
    expected = plain_inpainting(inpaint_model, source, SEED)
    assert np.abs(pixels(zoomed) - pixels(expected)).max() <= 1
    own_model = plain_inpainting(test_model, source, SEED)
    assert np.abs(pixels(zoomed) - pixels(own_model)).max() > 1
    # A job recorded with a model this worker does not have configured is refused.
    with pytest.raises(RequestError, match="no longer configured"):
        run_zoom(own, zoom_of(own, source, inpaint_model=str(test_model)))
