"""Runner behaviour beyond the images: previews, cancellation, warnings, passes, the LRU."""

from __future__ import annotations

import numpy
import pytest
import torch
from PIL import Image

from engine.errors import JobCancelled
from engine.families import model_info
from engine.loading import load_pipeline, pick_device, pick_dtype
from engine.previews import Preview
from engine.request import GenerationRequest, validate_request
from engine.runner import Runner, _capture_x0
from engine.samplers import DIFFUSION_SAMPLERS, make_scheduler
from engine.settings import EngineSettings
from engine.speed import Speed, optimise


@pytest.fixture(scope="module")
def sd15(tiny_model):
    settings = EngineSettings(model=str(tiny_model("sd15")), preview_every=2, device="cpu")
    return settings, Runner(settings)


def _request(settings, **values):
    return validate_request(GenerationRequest(**{"prompt": "a cat", **values}), settings)


def test_progress_every_step_and_previews_every_n(sd15):
    settings, runner = sd15
    calls: list[tuple[int, int, Image.Image | None]] = []
    out = runner.txt2img([_request(settings, steps=4, count=2)],
                         lambda *call: calls.append(call), lambda: False)
    assert [(step, total) for step, total, _ in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    previews = [p for _, _, p in calls]
    assert previews[0] is None and previews[2] is None
    assert isinstance(previews[1], Preview) and isinstance(previews[3], Preview)
    # two 16x16 latents side by side, scaled up for display
    size = previews[3].image().size
    assert size[0] == 2 * size[1]
    assert len(out[0].images) == 2


def test_cancel_stops_before_decoding(sd15):
    settings, runner = sd15
    pipe = runner.pipeline(settings.model)
    decoded = []
    original = pipe.vae.decode

    def counting_decode(*args, **kwargs):
        decoded.append(1)
        return original(*args, **kwargs)

    pipe.vae.decode = counting_decode
    steps: list[int] = []
    try:
        with pytest.raises(JobCancelled):
            runner.txt2img([_request(settings, steps=4)], lambda s, t, p: steps.append(s),
                           lambda: len(steps) >= 2)
    finally:
        del pipe.vae.decode
    assert steps == [1, 2] and decoded == []


def test_network_passes_count_cfg(sd15):
    settings, runner = sd15
    with_cfg = runner.txt2img([_request(settings, steps=3, cfg=7.0)], lambda *_: None,
                              lambda: False)
    without = runner.txt2img([_request(settings, steps=3, cfg=1.0)], lambda *_: None,
                             lambda: False)
    assert with_cfg[0].metadata["network_passes"] == 6
    assert without[0].metadata["network_passes"] == 3


def test_long_prompts_are_read_whole_on_clip_models(sd15):
    """Past 77 tokens they are chunked (engine.prompting.encoding), so nothing is ignored;
    tests/test_prompting.py checks the T5 limit's warning."""
    settings, runner = sd15
    prompt = "a very long prompt " * 10  # one token per character in the tiny tokenizer
    out = runner.txt2img([_request(settings, prompt=prompt, negative_prompt="ugly " * 20,
                                   count=1)], lambda *_: None, lambda: False)
    assert out[0].metadata["warnings"] == []


@pytest.mark.parametrize("sampler", DIFFUSION_SAMPLERS)
def test_every_sampler_runs_and_previews(sd15, sampler):
    settings, runner = sd15
    previews: list = []
    (out,) = runner.txt2img([_request(settings, sampler=sampler, steps=2, count=1)],
                            lambda s, t, p: previews.append(p), lambda: False)
    assert out.metadata["sampler"] == sampler and len(out.images) == 1
    assert previews[0] is None and isinstance(previews[1].image(), Image.Image)


def test_metadata_describes_the_run(sd15):
    settings, runner = sd15
    request = _request(settings, seed=41, count=2, sampler="euler")
    (out,) = runner.txt2img([request], lambda *_: None, lambda: False)
    assert out.seeds == [41, 42]
    meta = out.metadata
    assert (meta["model"], meta["family"], meta["sampler"]) == ("tiny-sd15", "sd15", "euler")
    assert (meta["steps"], meta["seed"], meta["width"], meta["height"]) == (2, 41, 32, 32)


def test_pipelines_stay_warm_in_an_lru(tiny_model):
    settings = EngineSettings(model=str(tiny_model("sd15")), models=[str(tiny_model("sdxl"))],
                              pipeline_cache_size=1, device="cpu")
    runner = Runner(settings)
    first = runner.pipeline(settings.model)
    assert runner.pipeline(settings.model) is first
    runner.pipeline(settings.models[0])
    assert runner.loaded_models == [settings.models[0]]
    assert runner.pipeline(settings.model) is not first


def test_img2img_reuses_the_loaded_components(sd15):
    settings, runner = sd15
    request = _request(settings, count=2, steps=4)
    init = Image.new("RGB", (32, 32), (200, 40, 40))
    steps: list[int] = []
    images = runner.img2img(request, init, 0.5, lambda s, t, p: steps.append(t), lambda: False)
    assert len(images) == 2 and images[0].size == (32, 32)
    assert steps and all(total == 2 for total in steps)  # strength 0.5 of 4 steps
    again = runner.img2img(request, init, 0.5, lambda *_: None, lambda: False)
    assert list(images[0].getdata()) == list(again[0].getdata())


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "dpmpp_2m_karras", "flow_euler"])
def test_x0_capture_matches_the_final_sample(sampler):
    """At the last step (sigma 0) the x0 prediction is the sample itself."""
    base = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "beta_end": 0.012}
    scheduler = make_scheduler(sampler, base, (sampler,))
    sink: dict = {}
    _capture_x0(scheduler, sink)
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    for t in scheduler.timesteps:
        model_output = torch.randn(1, 4, 8, 8, generator=generator)
        sample = scheduler.step(model_output, t, sample, return_dict=False)[0]
        assert sink["x0"] is not None and sink["x0"].shape == sample.shape
    assert torch.allclose(sink["x0"], sample, atol=1e-4)


def test_device_and_dtype_choice():
    cpu = torch.device("cpu")
    assert pick_device("cpu") == cpu
    assert pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16
    assert pick_dtype("auto", torch.device("mps")) == torch.float16


def test_batched_requests_each_get_their_own_previews(sd15):
    settings, runner = sd15
    first, second = _request(settings, steps=2, count=1, seed=1), _request(settings, steps=2,
                                                                          count=2, seed=9)
    batched: list[tuple[int, dict[str, Preview]]] = []
    runner.txt2img([first, second], lambda *call: None, lambda: False,
                   batch_progress=lambda step, total, previews: batched.append((step, previews)))
    solo: list[Preview | None] = []
    runner.txt2img([second], lambda step, total, preview: solo.append(preview), lambda: False)
    shown = {job_id: preview.image() for job_id, preview in batched[-1][1].items()}
    assert set(shown) == {first.job_id, second.job_id}
    # one latent for the first job, two side by side for the second: nothing of the other's
    assert shown[first.job_id].size[0] == shown[first.job_id].size[1]
    own = numpy.asarray(shown[second.job_id], dtype=numpy.int16)
    assert solo[-1] is not None
    alone = numpy.asarray(solo[-1].image(), dtype=numpy.int16)
    assert own.shape == alone.shape
    assert numpy.abs(own - alone).max() <= 2


@pytest.mark.parametrize("change", [{"cfg": 4.0}, {"negative_prompt": "blurry"},
                                    {"steps": 3}, {"operation": "upscale"}])
def test_a_batch_of_requests_that_need_separate_calls_is_refused(sd15, change):
    settings, runner = sd15
    first = _request(settings, steps=2, count=1)
    other = first.model_copy(update={"job_id": "other", **change})
    called: list[int] = []
    with pytest.raises(ValueError, match="must share"):
        runner.txt2img([first, other], lambda *call: called.append(1), lambda: False)
    assert called == []
    # each alone is fine: a request that runs by itself has nothing to share
    assert len(runner.txt2img([other.model_copy(update={"operation": "txt2img"})],
                              lambda *_: None, lambda: False)[0].images) == 1


def _fused(module: torch.nn.Module) -> bool:
    return any(getattr(m, "fused_projections", False) for m in module.modules())


def test_cuda_optimisations_stay_off_the_cpu(sd15, tiny_model):
    settings, runner = sd15
    pipe = runner.pipeline(settings.model)
    assert runner.device.type == "cpu"
    assert not _fused(pipe.unet)
    assert not pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    # what the loader applies on CUDA, applied by hand, visibly changes the pipeline
    fresh = load_pipeline(model_info(str(tiny_model("sd15")), settings), torch.device("cpu"),
                          torch.float32).pipeline
    optimise(fresh, Speed(), torch.device("cuda"), torch.bfloat16)
    assert _fused(fresh.unet)
    assert fresh.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert fresh.vae.config.force_upcast is False
