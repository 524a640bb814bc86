"""The "upscale" engine operation, run in-process on a tiny model and a tiny ESRGAN.

The op is called the way the worker calls it (an OperationContext on a Runner); clicks through
Discord run in tests/test_plugin_upscale_bot.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bot.plugin_api import CheckFailure, JobView, cost_for
from bot.settings import Settings
from engine.operations import OperationContext, get_operation
from engine.request import GenerationRequest, RequestError, validate_request
from engine.runner import JobCancelled, Runner
from engine.settings import EngineSettings
from plugins.upscale import OPERATION, engine_ops  # noqa: F401  (registers the operation)
from plugins.upscale.buttons import image_request, upscale_request
from plugins.upscale.pricing import upscale_price
from plugins.upscale.settings import UpscaleSettings
from plugins.upscale.tiling import run_tiled, tile_spans
from plugins.upscale.upscalers import TILE, enlarge, load_upscaler, to_tensor
from tests.support.upscaler import make_test_upscaler

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models, in this process

SIZE = 32  # the test model's native size
SEED = 1234


@pytest.fixture(scope="module")
def runner(test_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    return Runner(EngineSettings(model=str(test_model), device="cpu", dtype="float32",
                                 preview_every=0,
                                 output_dir=tmp_path_factory.mktemp("outputs")))


class Recorder:
    """The worker's side of an OperationContext: progress calls and a cancel switch."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.cancel = False

    def progress(self, step: int, total: int, preview: Any) -> None:
        self.steps.append((step, total))

    def cancelled(self) -> bool:
        return self.cancel


def context(runner: Runner, recorder: Recorder) -> OperationContext:
    """The op's view of ``runner``, as the worker makes it for each job."""
    return OperationContext(runner, recorder.progress, recorder.cancelled)


@pytest.fixture
def upscaler_runner(runner: Runner, monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], Runner]:
    """A runner of its own (a worker started anew) with IMAGINEBOT_UPSCALE_MODEL set."""

    def make(model: Path) -> Runner:
        monkeypatch.setenv("IMAGINEBOT_UPSCALE_MODEL", str(model))
        return Runner(runner.settings)

    return make


def request(runner: Runner, image: Path | None, scale: int = 2, **fields: Any,
            ) -> GenerationRequest:
    params = {"scale": scale, "strength": 0.35,
              **({"image_path": str(image)} if image is not None else {})}
    raw = GenerationRequest(prompt="a lighthouse", seed=SEED, count=1, steps=2,
                            sampler="euler", operation=OPERATION, params=params, **fields)
    return validate_request(raw, runner.settings)


def txt2img(runner: Runner, count: int = 4) -> list[Image.Image]:
    raw = GenerationRequest(prompt="a lighthouse", seed=SEED - 2, count=count, steps=2,
                            sampler="euler")
    return runner.txt2img([validate_request(raw, runner.settings)], lambda *a: None,
                          lambda: False)[0].images


def saved(runner: Runner, image: Image.Image, name: str) -> Path:
    folder = runner.settings.output_dir / "job"
    folder.mkdir(exist_ok=True)
    image.save(folder / name)
    return folder / name


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def same_image(a: Image.Image, b: Image.Image) -> bool:
    """Equal up to rounding: a grid's images and single ones may differ by one level in a few
    pixels, while two different images are tens of levels apart on average."""
    return a.size == b.size and float(np.abs(pixels(a) - pixels(b)).mean()) < 0.5


def upscale(ctx: OperationContext, req: GenerationRequest) -> Image.Image:
    (image,) = get_operation(OPERATION)(ctx, req)
    return image


# -- which image a button points at ---------------------------------------------------------------

def as_job(request: GenerationRequest, seeds: list[int], kind: str = "imagine") -> JobView:
    """What a click hands the plugin: the read-only view of a finished job."""
    return JobView(id="b" * 32, kind=kind, owner_id=1, request=request,
                   image_paths=tuple(Path(f"/out/{i}.png") for i in range(len(seeds))),
                   seeds=tuple(seeds), image_count=len(seeds), parent_job_id=None,
                   created_at=datetime(2025, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("variation", [None, 77])
def test_image_request_makes_that_image_alone(runner: Runner, variation: int | None):
    """The engine's contract, as the upscale source relies on it, also for variation grids."""
    grid = validate_request(GenerationRequest(
        prompt="a lighthouse", seed=SEED, count=3, steps=2, sampler="euler",
        variation_seed=variation, variation_strength=0.5), runner.settings)
    output = runner.txt2img([grid], lambda *a: None, lambda: False)[0]
    job = as_job(grid, output.seeds)
    for index, image in enumerate(output.images):
        alone = runner.txt2img([image_request(job, index)], lambda *a: None, lambda: False)[0]
        # Batched and single runs may round differently by one level in a few pixels.
        assert np.abs(pixels(alone.images[0]) - pixels(image)).max() <= 1


def test_upscale_requests_double_until_the_limit():
    grid = GenerationRequest(prompt="x", seed=5, count=4, width=SIZE, height=SIZE, steps=2)
    limit = UpscaleSettings(max_pixels=128 * 128, hires_strength=0.3)
    first = upscale_request(as_job(grid, [5, 6, 7, 8]), 3, limit)
    assert (first.operation, first.seed, first.count) == (OPERATION, 8, 1)
    assert first.params == {"scale": 2, "image_path": "/out/3.png", "strength": 0.3}
    second = upscale_request(as_job(first, [8], kind="upscale"), 0, limit)
    assert (second.params["scale"], second.params["image_path"]) == (4, "/out/0.png")
    with pytest.raises(CheckFailure, match=r"as large as this bot makes them \(128x128\)"):
        upscale_request(as_job(second, [8], kind="upscale"), 0, limit)


# -- what an upscale costs, before it starts ------------------------------------------------------

def pricing_bot(upscale: UpscaleSettings) -> Any:
    """What the price reads: the core price settings (3 credits a base image) and the plugin's."""
    return SimpleNamespace(settings=Settings(price_per_image=3),
                           plugins=SimpleNamespace(settings_for=lambda model: upscale))


def upscale_of_1024(tmp_path: Path, scale: int, *, source_kept: bool) -> GenerationRequest:
    """An upscale to ``scale`` of a 1024² image of 30 steps; its source is the image at
    ``scale / 2``, whose file is kept or deleted."""
    source = tmp_path / "source.png"
    if source_kept:
        source.write_bytes(b"png")
    else:
        source.unlink(missing_ok=True)
    return GenerationRequest(prompt="x", seed=5, count=1, width=1024, height=1024, steps=30,
                             operation=OPERATION, params={"scale": scale, "strength": 0.35,
                                                          "image_path": str(source)})


HIRES = UpscaleSettings(model=None, hires_strength=0.35)


def test_a_2x_upscale_costs_a_generation_of_its_output_at_its_effective_steps(tmp_path: Path):
    bot = pricing_bot(HIRES)
    cost = upscale_price(bot, upscale_of_1024(tmp_path, 2, source_kept=True))
    # 2048² at int(30 × 0.35) = 10 steps: 4 × the pixels, 1/3 of the steps.
    assert cost == cost_for(bot.settings, 2048, 2048, 10, 1) == 4
    assert cost > cost_for(bot.settings, 1024, 1024, 30, 1)  # what its source request costs


def test_a_deleted_source_adds_its_remake(tmp_path: Path):
    bot = pricing_bot(HIRES)
    kept = upscale_price(bot, upscale_of_1024(tmp_path, 2, source_kept=True))
    deleted = upscale_price(bot, upscale_of_1024(tmp_path, 2, source_kept=False))
    assert deleted == kept + cost_for(bot.settings, 1024, 1024, 30, 1) == 4 + 3


def test_a_4x_upscale_of_a_deleted_source_adds_the_txt2img_and_the_2x_step(tmp_path: Path):
    bot = pricing_bot(HIRES)
    kept = upscale_price(bot, upscale_of_1024(tmp_path, 4, source_kept=True))
    assert kept == cost_for(bot.settings, 4096, 4096, 10, 1) == 16
    deleted = upscale_price(bot, upscale_of_1024(tmp_path, 4, source_kept=False))
    assert deleted == kept + 3 + 4  # the 1024² txt2img, then the 2048² hires fix


def test_an_upscaler_model_costs_the_base_price_per_image(tmp_path: Path):
    bot = pricing_bot(UpscaleSettings(model=tmp_path / "esrgan.pth"))
    assert upscale_price(bot, upscale_of_1024(tmp_path, 2, source_kept=True)) == 3
    assert upscale_price(bot, upscale_of_1024(tmp_path, 4, source_kept=False)) == 3 + 3 + 3


def test_a_hires_fix_of_few_steps_is_charged_the_steps_it_runs(tmp_path: Path):
    """hires_fix raises the steps to ceil(1 / strength) so that one runs; that one is charged."""
    bot = pricing_bot(UpscaleSettings(model=None, hires_strength=0.1))
    request = upscale_of_1024(tmp_path, 2, source_kept=True).model_copy(
        update={"steps": 2, "params": {"scale": 2, "strength": 0.1,
                                       "image_path": str(tmp_path / "source.png")}})
    # max(2, 10) steps at 0.1: 1 step at 2048², 4 pixels of 30 steps' worth: the base price.
    assert upscale_price(bot, request) == cost_for(bot.settings, 2048, 2048, 1, 1) == 3


# -- the diffusion model's own "hires fix" --------------------------------------------------------

def test_hires_fix_doubles_the_size_and_repaints_deterministically(runner: Runner):
    source = saved(runner, txt2img(runner)[2], "2.png")
    recorder = Recorder()
    first = upscale(context(runner, recorder), request(runner, source))
    again = upscale(context(runner, Recorder()), request(runner, source))

    assert first.size == (2 * SIZE, 2 * SIZE)
    assert np.array_equal(pixels(first), pixels(again))
    resized = Image.open(source).convert("RGB").resize(first.size, Image.Resampling.LANCZOS)
    assert not same_image(first, resized)  # the img2img pass ran
    assert recorder.steps and recorder.steps[-1][0] == recorder.steps[-1][1]


def test_a_missing_source_is_made_again_from_its_seed(runner: Runner):
    """Image 2 of seed S is seed S + 2 alone: the same pixels, so the same upscale."""
    grid = txt2img(runner)
    source = saved(runner, grid[2], "2.png")
    from_file = upscale(context(runner, Recorder()), request(runner, source))
    source.unlink()
    remade = upscale(context(runner, Recorder()), request(runner, source))
    assert same_image(from_file, remade)

    # And one level further: a 4x upscale whose 2x source is gone too.
    double = saved(runner, from_file, "double.png")
    quadruple = upscale(context(runner, Recorder()), request(runner, double, scale=4))
    double.unlink()
    remade4 = upscale(context(runner, Recorder()), request(runner, double, scale=4))
    assert quadruple.size == (4 * SIZE, 4 * SIZE)
    assert same_image(quadruple, remade4)


def test_unreadable_files_and_files_elsewhere_are_made_again(runner: Runner, tmp_path: Path):
    source = saved(runner, txt2img(runner)[2], "2.png")
    from_file = upscale(context(runner, Recorder()), request(runner, source))
    outside = tmp_path / "2.png"
    Image.new("RGB", (SIZE, SIZE), "white").save(outside)
    source.write_bytes(b"truncated")
    for path in (outside, source):
        remade = upscale(context(runner, Recorder()), request(runner, path))
        assert same_image(from_file, remade)  # made again, not read


@pytest.mark.parametrize(("params", "field"), [
    ({"scale": 3, "strength": 0.35}, "scale"), ({"scale": 1, "strength": 0.35}, "scale"),
    ({"scale": "2", "strength": 0.35}, "scale"), ({"scale": 2, "strength": 0}, "strength"),
    ({"scale": 2}, "strength"),
])
def test_bad_params_are_refused_with_a_clear_error(runner: Runner, params, field):
    raw = GenerationRequest(prompt="x", seed=1, count=1, operation=OPERATION, params=params)
    with pytest.raises(RequestError) as error:
        upscale(context(runner, Recorder()), validate_request(raw, runner.settings))
    assert error.value.field == field and "upscale" in str(error.value)


# -- a super-resolution model through spandrel ----------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_upscaler_model_file_is_used_when_configured(runner: Runner, tmp_path: Path,
                                                     suffix: str, upscaler_runner):
    model_path = make_test_upscaler(tmp_path / f"esrgan{suffix}", scale=4)
    source = saved(runner, txt2img(runner)[0], "0.png")
    recorder = Recorder()
    result = upscale(context(upscaler_runner(model_path), recorder), request(runner, source))

    assert result.size == (2 * SIZE, 2 * SIZE)  # a 4x model, brought to the asked 2x
    model = load_upscaler(str(model_path), "cpu", torch.float32)
    assert model.scale == 4 and model.architecture.id == "ESRGAN"
    with Image.open(source) as image:
        expected = model(to_tensor(image))  # the model on the whole image, untiled
    direct = Image.fromarray(expected[0].permute(1, 2, 0).mul(255).round().byte().numpy())
    direct = direct.resize(result.size, Image.Resampling.LANCZOS)
    assert np.abs(pixels(result) - pixels(direct)).max() <= 1
    assert recorder.steps == [(1, 1)]  # one tile for a small image


def test_tiled_output_equals_untiled_output(test_upscaler: Path):
    model = load_upscaler(str(test_upscaler), "cpu", torch.float32)
    image = torch.rand(1, 3, 72, 80, generator=torch.Generator().manual_seed(0))
    whole = model(image)
    tiles: list[tuple[int, int]] = []
    tiled = run_tiled(model, image, model.scale, tile=32, pad=16,
                      progress=lambda done, total: tiles.append((done, total)))
    assert tiled.shape == whole.shape == (1, 3, 72 * 4, 80 * 4)
    assert tiles == [(n, 9) for n in range(1, 10)]  # 3 x 3 tiles
    assert (tiled - whole).abs().max() < 1e-5
    # Without context around the tiles the seams show: the comparison above can fail.
    seams = run_tiled(model, image, model.scale, tile=32, pad=0)
    assert (seams - whole).abs().max() > 1e-3


def test_large_images_are_cut_into_tiles(test_upscaler: Path):
    model = load_upscaler(str(test_upscaler), "cpu", torch.float32)
    image = Image.new("RGB", (TILE + 8, 8), "gray")
    calls: list[tuple[int, int]] = []
    result = enlarge(model, image, (2 * image.width, 16), pad=4,
                     progress=lambda done, total: calls.append((done, total)))
    assert result.size == (2 * image.width, 16)
    assert calls == [(1, 2), (2, 2)]
    assert tile_spans(TILE + 8, TILE) == [(0, TILE), (TILE, TILE + 8)]


def test_an_unusable_upscaler_file_is_a_clear_error(runner: Runner, tmp_path: Path,
                                                    upscaler_runner):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    source = saved(runner, Image.new("RGB", (SIZE, SIZE)), "0.png")
    with pytest.raises(RequestError) as error:
        upscale(context(upscaler_runner(broken), Recorder()), request(runner, source))
    assert "upscaler model configured on this bot cannot be loaded" in str(error.value)


def test_cancelling_stops_between_tiles(runner: Runner, test_upscaler: Path, upscaler_runner):
    wide = saved(runner, Image.new("RGB", (TILE + 8, 8), "gray"), "wide.png")
    recorder = Recorder()

    def cancel_after_first_tile(step: int, total: int, preview: Any) -> None:
        recorder.steps.append((step, total))
        recorder.cancel = True

    ctx = OperationContext(upscaler_runner(test_upscaler), cancel_after_first_tile,
                           recorder.cancelled)
    with pytest.raises(JobCancelled):
        upscale(ctx, request(runner, wide, width=TILE + 8, height=8))
    assert recorder.steps == [(1, 2)]
