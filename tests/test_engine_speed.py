"""The speed settings and their contract tiers (engine.speed), on the CPU with tiny models.

The reference tier must be bitwise plain diffusers. Each fast setting's real code runs here by
telling :func:`optimise` it is on CUDA; its promise, near-equal, is checked against the
tolerances in docs/engine.md ("Speed settings and contract tiers"), measured on these models.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from engine.errors import RequestError
from engine.request import GenerationRequest, validate_request
from engine.runner import Runner
from engine.samplers import make_scheduler
from engine.settings import EngineSettings
from engine.speed import (
    SDPA_ORDER,
    SETTING_TIERS,
    TIERS,
    Float8RowwiseLinear,
    Speed,
    attention_choice,
    configure_torch,
    model_dtype,
    optimise,
    warm_up,
)

PROMPT = "a red fox in the snow"
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
#: The fast tier's promise on these models in float32 (docs/engine.md), on images as floats
#: in [0, 1] before 8-bit rounding: the largest pixel difference from plain diffusers, and the
#: least PSNR in dB. Measured: 1.3e-6 and 133 dB (tuned kernels), 1.0e-6 and 134 dB (compile);
#: the 8-bit images are identical.
FAST_MAX_DELTA, FAST_PSNR = 1e-4, 100.0
#: The lossy tier's FP8 layers on the tiny UNet: measured 4.9e-3 and 61 dB.
LOSSY_PSNR = 50.0


def _plain(folder: Path, dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe: DiffusionPipeline) -> np.ndarray:
    """Two images, seeds 1 and 2, three steps, as floats in [0, 1] (before 8-bit rounding,
    which would hide the differences)."""
    return np.asarray(pipe([PROMPT] * 2, height=32, width=32, num_inference_steps=3,
                           generator=[torch.Generator("cpu").manual_seed(seed) for seed in (1, 2)],
                           output_type="np").images, dtype=np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


# --- the reference tier ------------------------------------------------------------------

@pytest.mark.parametrize(("family", "dtype"), [("sd15", "float32"), ("flux", "float16")])
def test_the_reference_tier_is_plain_diffusers_bitwise(tiny_model, one_thread, family, dtype):
    """Through the real Runner; FLUX asked for float16 runs in bfloat16, as plain diffusers
    loaded in bfloat16 does."""
    folder = tiny_model(family)
    settings = EngineSettings(model=str(folder), device="cpu", dtype=dtype, tier="reference",
                              preview_every=0)
    runner = Runner(settings)
    request = validate_request(GenerationRequest(prompt=PROMPT, seed=1, count=2, steps=3),
                               settings)
    out = runner.txt2img([request], lambda *_: None, lambda: False)[0]
    loaded_dtype = runner.model(settings.model).dtype
    assert loaded_dtype == (torch.bfloat16 if family == "flux" else torch.float32)
    plain = _plain(folder, loaded_dtype)
    plain.scheduler = make_scheduler(request.sampler, plain.scheduler.config, (request.sampler,))
    expected = plain([PROMPT] * 2, height=request.height, width=request.width,
                     num_inference_steps=3, guidance_scale=request.cfg,
                     generator=[torch.Generator("cpu").manual_seed(s) for s in (1, 2)]).images
    for image, reference in zip(out.images, expected, strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(reference))


def test_the_reference_tier_touches_nothing_even_on_cuda(tiny_model):
    pipe = _plain(tiny_model("sd15"))
    forward = pipe.unet.forward
    assert optimise(pipe, Speed(tier="reference"), CUDA, torch.bfloat16) == []
    assert pipe.unet.forward == forward
    assert not any(getattr(m, "fused_projections", False) for m in pipe.unet.modules())
    assert pipe.vae.config.force_upcast is True


def test_the_fast_tier_changes_nothing_on_the_cpu(tiny_model):
    """Tuned kernels pay only on CUDA, so the default tier leaves a CPU run exact."""
    pipe = _plain(tiny_model("sd15"))
    assert optimise(pipe, Speed(), CPU, torch.float32) == []


# --- the fast tier -----------------------------------------------------------------------

@pytest.mark.parametrize("attention", ["auto", "flash"])
def test_tuned_kernels_keep_the_fast_tiers_promise(tiny_model, one_thread, attention):
    folder = tiny_model("sd15")
    expected = _images(_plain(folder))
    pipe = _plain(folder)
    applied = optimise(pipe, Speed(attention=attention), CUDA, torch.float32)
    choice = "cudnn" if attention == "auto" else attention
    assert applied == ["channels_last", "fused qkv", f"attention {choice}"]
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    images = _images(pipe)
    assert np.abs(images - expected).max() <= FAST_MAX_DELTA
    assert _psnr(images, expected) >= FAST_PSNR


def test_the_vae_runs_without_its_fp32_upcast_only_in_bf16(tiny_model):
    for dtype, upcast in ((torch.bfloat16, False), (torch.float16, True)):
        pipe = _plain(tiny_model("sdxl"))
        optimise(pipe, Speed(), CUDA, dtype)
        assert pipe.vae.config.force_upcast is upcast


def test_attention_auto_is_cudnn_only_at_the_fast_tier_on_cuda():
    assert attention_choice(Speed(), CUDA) == "cudnn"
    assert attention_choice(Speed(), CPU) == "native"
    assert attention_choice(Speed(tier="reference"), CUDA) == "native"
    assert attention_choice(Speed(attention="flash"), CPU) == "flash"


def test_the_preferred_sdpa_kernels_are_in_force_inside_the_denoiser(tiny_model, monkeypatch):
    """The UNet calls PyTorch's SDPA directly: its forward runs under sdpa_kernel's priority."""
    pipe = _plain(tiny_model("sd15"))
    optimise(pipe, Speed(attention="cudnn"), CUDA, torch.float32)
    seen: list[list[int]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(torch._C._get_sdp_priority_order())
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    _images(pipe)
    order = [int(getattr(torch.nn.attention.SDPBackend, name)) for name in SDPA_ORDER["cudnn"]]
    inside = [priority for priority in seen if priority[:4] == order]
    # the tiny UNet's 8 attention calls a step, 3 steps, run under the preference; the text
    # encoder's and the VAE's keep PyTorch's default
    assert len(inside) == 24
    assert len(seen) > len(inside)


@pytest.mark.parametrize(("family", "expected"), [("flux", "attention flash3"),
                                                  ("sd15", "attention flash")])
def test_flash3_goes_through_diffusers_where_the_model_dispatches(tiny_model, monkeypatch,
                                                                  family, expected):
    pipe = _plain(tiny_model(family))
    denoiser = pipe.unet if family == "sd15" else pipe.transformer
    backends: list[str] = []
    monkeypatch.setattr(denoiser, "set_attention_backend", backends.append, raising=False)
    assert expected in optimise(pipe, Speed(attention="flash3"), CUDA, torch.bfloat16)
    assert backends == (["_flash_3"] if family == "flux" else [])


@pytest.mark.slow  # torch.compile of a UNet and a VAE decoder: about 45 s on one core
def test_compile_keeps_the_fast_tiers_promise(tiny_model, one_thread):
    folder = tiny_model("sd15")
    expected = _images(_plain(folder))
    pipe = _plain(folder)
    assert optimise(pipe, Speed(compile="default"), CPU, torch.float32) == [
        "compile default", "compile vae decoder"]
    images = _images(pipe)
    assert np.abs(images - expected).max() <= FAST_MAX_DELTA
    assert _psnr(images, expected) >= FAST_PSNR


def test_flux_compiles_its_repeated_blocks(tiny_model, monkeypatch):
    pipe = _plain(tiny_model("flux"))
    calls: list[dict] = []
    monkeypatch.setattr(pipe.transformer, "compile_repeated_blocks",
                        lambda **options: calls.append(options))
    monkeypatch.setattr(pipe.vae.decoder, "compile", lambda **options: calls.append(options))
    applied = optimise(pipe, Speed(compile="max"), CUDA, torch.bfloat16)
    assert "compile max (repeated blocks)" in applied
    # separately compiled regions get no CUDA graphs; every shape is static
    assert [call["mode"] for call in calls] == ["max-autotune-no-cudagraphs"] * 2
    assert all(call["dynamic"] is False for call in calls)


# --- the lossy tier ----------------------------------------------------------------------

def test_fp8_quantizes_the_denoisers_linear_layers_within_the_lossy_tolerance(tiny_model,
                                                                               one_thread):
    folder = tiny_model("sd15")
    expected = _images(_plain(folder))
    pipe = _plain(folder)
    applied = optimise(pipe, Speed(tier="lossy", quantize="fp8", attention="native"), CUDA,
                       torch.float32)
    swapped = [m for m in pipe.unet.modules() if isinstance(m, Float8RowwiseLinear)]
    assert f"fp8 ({len(swapped)} linear layers)" in applied and swapped
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in swapped)
    images = _images(pipe)
    assert not np.array_equal(images, expected)
    assert _psnr(images, expected) >= LOSSY_PSNR


def test_an_fp8_layer_is_close_to_its_linear_layer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        out, reference = Float8RowwiseLinear(linear)(x), linear(x)
    assert out.shape == (2, 5, 32)
    assert float((out - reference).abs().max()) < 0.05 * float(reference.abs().max())


# --- refusals ----------------------------------------------------------------------------

@pytest.mark.parametrize(("speed", "device", "words"), [
    (Speed(tier="reference", compile="default"), CPU,
     "IMAGINEBOT_COMPILE=default is in the fast tier, above IMAGINEBOT_TIER=reference"),
    (Speed(tier="reference", attention="cudnn"), CUDA,
     "IMAGINEBOT_ATTENTION=cudnn is in the fast tier"),
    (Speed(quantize="fp8"), CUDA, "IMAGINEBOT_QUANTIZE=fp8 is in the lossy tier, above "
     "IMAGINEBOT_TIER=fast: set IMAGINEBOT_TIER=lossy, or IMAGINEBOT_QUANTIZE=off"),
    (Speed(tier="lossy", quantize="fp8"), CPU, "needs an NVIDIA Hopper GPU (H100) or newer, "
     "and this worker runs on the cpu"),
    (Speed(attention="cudnn"), CPU, "needs an NVIDIA GPU"),
])
def test_check_refuses_what_the_tier_or_the_device_does_not_allow(speed, device, words):
    with pytest.raises(RequestError, match=words.replace("(", r"\(").replace(")", r"\)")):
        speed.check(device)


def test_fp8_needs_hopper(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(RequestError, match="runs on NVIDIA A100"):
        Speed(tier="lossy", quantize="fp8").check(CUDA)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    Speed(tier="lossy", quantize="fp8", attention="native").check(CUDA)


def test_settings_refuse_a_setting_above_the_tier_the_admin_set_with_the_same_sentence(
        monkeypatch):
    for tier in ("fast", "reference"):
        with pytest.raises(ValueError, match=f"IMAGINEBOT_QUANTIZE=fp8 is in the lossy tier, "
                                             f"above IMAGINEBOT_TIER={tier}"):
            EngineSettings(tier=tier, quantize="fp8")
    with pytest.raises(ValueError, match="IMAGINEBOT_COMPILE=max is in the fast tier"):
        EngineSettings(tier="reference", compile="max")
    monkeypatch.setenv("IMAGINEBOT_TIER", "fast")  # set in the environment counts as set
    with pytest.raises(ValueError, match="above IMAGINEBOT_TIER=fast"):
        EngineSettings(quantize="fp8")
    assert EngineSettings(tier="lossy", quantize="fp8").tier == "lossy"


def test_an_unset_tier_is_what_the_settings_ask_for():
    """Naming a lossy setting is the opt-in: with IMAGINEBOT_TIER unset, fp8 makes it lossy."""
    assert EngineSettings().tier == "fast"
    assert EngineSettings(quantize="fp8").tier == "lossy"
    assert EngineSettings(compile="max").tier == "fast"
    assert Speed.from_settings(EngineSettings(quantize="fp8")).effective_tier == "lossy"


def test_every_setting_value_has_a_tier():
    for name, values in SETTING_TIERS.items():
        field = EngineSettings.model_fields[name]
        assert set(values) == set(field.annotation.__args__), name
        assert set(values.values()) <= set(TIERS)
    assert Speed().effective_tier == "fast"
    assert Speed(tier="reference").effective_tier == "reference"
    assert Speed(tier="lossy", quantize="fp8").effective_tier == "lossy"
    assert Speed(tier="lossy").effective_tier == "fast"


# --- dtypes and process-wide flags -------------------------------------------------------

def test_flux_never_runs_in_float16(monkeypatch):
    assert model_dtype("flux", torch.float16, CPU) == torch.bfloat16
    assert model_dtype("flux-schnell", torch.bfloat16, CPU) == torch.bfloat16
    assert model_dtype("flux", torch.float32, CPU) == torch.float32
    assert model_dtype("sdxl", torch.float16, CPU) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert model_dtype("flux", torch.float16, CUDA) == torch.float32


@pytest.fixture
def restore_torch_flags(monkeypatch) -> Iterator[None]:
    precision = torch.get_float32_matmul_precision()
    limit = torch._dynamo.config.recompile_limit
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    yield
    torch.set_float32_matmul_precision(precision)
    torch._dynamo.config.recompile_limit = limit
    torch._logging.set_logs()


@pytest.mark.parametrize(("device", "tier", "precision"), [
    (CUDA, "fast", "high"), (CUDA, "lossy", "high"), (CUDA, "reference", "highest"),
    (CPU, "fast", None)])
def test_tf32_matmuls_only_at_the_fast_tier_on_cuda(restore_torch_flags, device, tier,
                                                    precision):
    torch.set_float32_matmul_precision("medium")  # a marker: the CPU leaves it alone
    configure_torch(device, Speed(tier=tier))
    assert torch.get_float32_matmul_precision() == (precision or "medium")


def test_compile_keeps_its_kernels_in_a_persistent_folder(restore_torch_flags, tmp_path):
    import os

    configure_torch(CPU, Speed(compile="default"), tmp_path / "inductor")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert (tmp_path / "inductor").is_dir()
    assert torch._dynamo.config.recompile_limit >= 64


# --- warm-up -----------------------------------------------------------------------------

class RecordingRunner:
    """Runs nothing; records each call's (images, width, height) and steps the progress."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def txt2img(self, requests, progress, cancelled):
        first = requests[0]
        self.calls.append((sum(r.count for r in requests), first.width, first.height))
        progress(1, 2, None)
        return []


def test_warm_up_runs_each_bucket_once_and_keeps_the_watchdog_fed(tiny_model):
    settings = EngineSettings(model=str(tiny_model("sd15")), device="cpu", compile="default",
                              warm_aspects=["1:1", "16:9"], max_batch=4, max_count=2)
    runner, alive = RecordingRunner(), []
    buckets = warm_up(runner, settings, alive=alive.append)  # type: ignore[arg-type]
    assert runner.calls == buckets
    assert [images for images, _, _ in buckets] == [1, 2, 4, 1, 2, 4]
    assert {(w, h) for _, w, h in buckets} == {(32, 32), (40, 24)}
    assert alive == ["tiny-sd15"] * 6
    assert warm_up(runner, settings.model_copy(update={"compile": "off"})) == []


def test_warm_up_images_are_thrown_away(tiny_model, one_thread, tmp_path):
    """Real runs of the buckets (uncompiled here), batched as members' requests are."""
    settings = EngineSettings(model=str(tiny_model("sd15")), device="cpu", max_batch=2,
                              output_dir=tmp_path, preview_every=0)
    runner = Runner(settings)
    runs: list[int] = []
    txt2img = runner.txt2img

    def counting(requests, *args, **kwargs):
        outputs = txt2img(requests, *args, **kwargs)
        runs.append(sum(len(output.images) for output in outputs))
        return outputs

    runner.txt2img = counting  # type: ignore[method-assign]
    warm_up(runner, settings.model_copy(update={"compile": "default"}))
    assert runs == [1, 2]
    assert list(tmp_path.iterdir()) == []


class Pipe:
    def __init__(self, *incoming: object) -> None:
        self.sent: list[object] = []
        self.incoming = list(incoming)

    def send(self, message: object) -> None:
        self.sent.append(message)

    def recv(self) -> object:
        if not self.incoming:
            raise EOFError
        return self.incoming.pop(0)


@pytest.fixture
def keep_sigint() -> Iterator[None]:
    """worker_main ignores SIGINT, as a worker process should; not the test process."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def test_the_worker_says_ready_after_the_warm_up(tiny_model, monkeypatch, keep_sigint):
    from engine.worker import Loaded, Loading, Ready, Shutdown, worker_main

    events = Pipe()
    order: list[str] = []

    def fake_warm_up(runner, settings, alive):
        order.append(f"warm-up after {len(events.sent)} messages")
        alive("tiny-sd15")

    monkeypatch.setattr("engine.speed.warm_up", fake_warm_up)
    settings = EngineSettings(model=str(tiny_model("sd15")), device="cpu")
    worker_main(settings, [], Pipe(Shutdown()), events, 30)  # type: ignore[arg-type]
    assert order == ["warm-up after 0 messages"]
    assert [type(message) for message in events.sent] == [Loading, Loaded, Ready]


def test_a_worker_with_settings_above_its_tier_fails_to_start_saying_why(tiny_model,
                                                                         keep_sigint):
    from engine.worker import StartupFailed, worker_main

    events = Pipe()
    settings = EngineSettings.model_construct(  # as the client hands settings over
        **{**EngineSettings(model=str(tiny_model("sd15")), device="cpu").model_dump(),
           "tier": "reference", "compile": "max"})
    worker_main(settings, [], Pipe(), events, 30)  # type: ignore[arg-type]
    (failed,) = events.sent
    assert isinstance(failed, StartupFailed)
    assert failed.reason == ("IMAGINEBOT_COMPILE=max is in the fast tier, above "
                             "IMAGINEBOT_TIER=reference: set IMAGINEBOT_TIER=fast, or "
                             "IMAGINEBOT_COMPILE=off")
