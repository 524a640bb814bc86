"""Remakes at the reference tier: engine.speed.reference_kernels on a tuned pipeline, and the
upscale plugin's remake of a deleted source through it, on the CPU with tiny models.

:func:`optimise` runs its real CUDA code here when told it is on CUDA (as in
tests/test_engine_speed.py). Inside ``reference_kernels`` the pipeline must make bitwise what
plain diffusers makes; after it, it must be tuned again, the same objects in the same places.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from torch._dynamo.utils import counters

from engine.operations import OperationContext, get_operation
from engine.request import GenerationRequest, validate_request
from engine.runner import Runner
from engine.samplers import make_scheduler
from engine.settings import EngineSettings
from engine.speed import Speed, _qkv_fused, optimise, reference_kernels, tuning
from plugins.upscale import OPERATION
from plugins.upscale import engine_ops as upscale_ops
from tests.test_lora import lora_tensors

pytestmark = pytest.mark.usefixtures("one_thread", "tf32_as_on_cuda")

PROMPT = "a red fox in the snow"
CUDA = torch.device("cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@pytest.fixture
def tf32_as_on_cuda() -> Iterator[None]:
    """The fast tier's process-wide flag, as engine.speed.configure_torch sets it on CUDA."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision(before)


def _pipe(folder: Path, dtype: torch.dtype) -> Any:
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe: Any) -> np.ndarray:
    """One image (batch 1), seed 1, as floats before 8-bit rounding, where tuned kernels and
    plain diffusers differ."""
    return np.asarray(pipe(PROMPT, height=32, width=32, num_inference_steps=2,
                           generator=torch.Generator("cpu").manual_seed(1),
                           output_type="np").images)


def _denoiser(pipe: Any) -> Any:
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def _state(pipe: Any) -> dict[str, Any]:
    """What optimise changes, by identity where it replaced an object."""
    denoiser = _denoiser(pipe)
    return {
        "precision": torch.get_float32_matmul_precision(),
        "fused": _qkv_fused(denoiser),
        "forward": denoiser.__dict__.get("forward"),
        "compiled": [m._compiled_call_impl for m in (*denoiser.modules(), *pipe.vae.modules())],
        "force_upcast": pipe.vae.config.force_upcast,
        "channels_last": pipe.vae.decoder.conv_in.weight.is_contiguous(
            memory_format=torch.channels_last),
    }


PLAIN_STATE = {"precision": "highest", "fused": False, "forward": None,
               "force_upcast": True, "channels_last": False}


@pytest.mark.parametrize(("family", "dtype"), [("sd15", "float32"), ("sd15", "bfloat16"),
                                               ("flux", "bfloat16")])
def test_reference_kernels_undo_the_fast_tier_and_compile(tiny_model, family, dtype):
    """Compiled code is never entered inside: nothing is compiled, which keeps this cheap."""
    folder = tiny_model(family)
    expected = _image(_pipe(folder, DTYPES[dtype]))
    pipe = _pipe(folder, DTYPES[dtype])
    applied = optimise(pipe, Speed(compile="default"), CUDA, DTYPES[dtype])
    assert {"fused qkv", "compile vae decoder", "attention cudnn"} <= set(applied)
    assert ("vae in bf16" in applied) is (dtype == "bfloat16")
    tuned = _state(pipe)
    graphs = counters["stats"]["unique_graphs"]
    with reference_kernels(pipe):
        inside = _state(pipe)
        assert {key: inside[key] for key in PLAIN_STATE} == PLAIN_STATE
        assert not any(inside["compiled"])
        assert np.array_equal(_image(pipe), expected)
    assert counters["stats"]["unique_graphs"] == graphs
    assert _state(pipe) == tuned


@pytest.mark.parametrize(("family", "dtype"), [("sd15", "bfloat16"), ("flux", "bfloat16")])
def test_the_tuned_kernels_come_back_after_a_remake(tiny_model, family, dtype):
    folder = tiny_model(family)
    expected = _image(_pipe(folder, DTYPES[dtype]))
    pipe = _pipe(folder, DTYPES[dtype])
    optimise(pipe, Speed(), CUDA, DTYPES[dtype])
    tuned = _image(pipe)
    assert not np.array_equal(tuned, expected)  # what reference_kernels has to undo
    with reference_kernels(pipe):
        assert np.array_equal(_image(pipe), expected)
    assert np.array_equal(_image(pipe), tuned)


@pytest.mark.slow  # torch.compile of FLUX's two block kinds and a VAE decoder: about 35 s
def test_a_compiled_pipeline_remakes_exactly_and_compiles_nothing_again(tiny_model):
    """Regional compile (Module.compile) is bypassed and comes back; fusing Q, K and V again
    makes new layers of the same shapes, which the compiled graphs take without recompiling."""
    folder = tiny_model("flux")
    expected = _image(_pipe(folder, torch.bfloat16))
    pipe = _pipe(folder, torch.bfloat16)
    assert "compile default (repeated blocks)" in optimise(
        pipe, Speed(compile="default"), CUDA, torch.bfloat16)
    compiled = _image(pipe)
    assert not np.array_equal(compiled, expected)
    graphs = counters["stats"]["unique_graphs"]
    with reference_kernels(pipe):
        assert np.array_equal(_image(pipe), expected)
    assert np.array_equal(_image(pipe), compiled)
    assert counters["stats"]["unique_graphs"] == graphs


def test_an_exception_inside_still_puts_the_tuning_back(tiny_model):
    pipe = _pipe(tiny_model("sd15"), torch.float32)
    optimise(pipe, Speed(compile="default"), CUDA, torch.float32)
    tuned = _state(pipe)
    with pytest.raises(RuntimeError, match="in the remake"), reference_kernels(pipe):
        raise RuntimeError("in the remake")
    assert _state(pipe) == tuned


def test_a_pipeline_optimise_never_saw_gets_only_the_precision(tiny_model):
    pipe = _pipe(tiny_model("sd15"), torch.float32)
    assert tuning(pipe) is None
    plain = _state(pipe)
    with reference_kernels(pipe):
        assert _state(pipe) == {**plain, "precision": "highest"}
    assert _state(pipe) == plain


def test_flash3_gives_way_to_native_attention_and_comes_back(tiny_model, monkeypatch):
    """FlashAttention-3 is diffusers' backend setting (flash_attn_interface is not installed
    here, so the setter is recorded instead)."""
    pipe = _pipe(tiny_model("flux"), torch.bfloat16)
    backends: list[str] = []
    monkeypatch.setattr(pipe.transformer, "set_attention_backend", backends.append,
                        raising=False)
    optimise(pipe, Speed(attention="flash3"), CUDA, torch.bfloat16)
    with reference_kernels(pipe):
        assert backends == ["_flash_3", "native"]
    assert backends == ["_flash_3", "native", "_flash_3"]


def test_a_lora_loaded_during_a_remake_keeps_qkv_unfused(tiny_model):
    """LoRA layers wrap to_q, to_k and to_v, which fused projections would bypass."""
    pipe = _pipe(tiny_model("sd15"), torch.float32)
    optimise(pipe, Speed(), CUDA, torch.float32)
    with reference_kernels(pipe):
        pipe.load_lora_weights(lora_tensors(pipe, 1), adapter_name="style")
    assert not _qkv_fused(pipe.unet)
    with reference_kernels(pipe):  # and a second remake has nothing to unfuse
        assert not _qkv_fused(pipe.unet)
    assert not _qkv_fused(pipe.unet)


# -- the upscale plugin's remake ------------------------------------------------------------------

def test_an_upscale_remakes_a_deleted_source_with_plain_diffusers_kernels(tiny_model,
                                                                           tmp_path):
    """The same upscale from plain diffusers' image; the tuned pipeline's own image would give
    another (bfloat16, where the tuned kernels differ by a few 8-bit levels)."""
    folder = tiny_model("sd15")
    settings = EngineSettings(model=str(folder), device="cpu", dtype="bfloat16",
                              preview_every=0, output_dir=tmp_path)
    runner = Runner(settings)
    optimise(runner.pipeline(settings.model), Speed(), CUDA, torch.bfloat16)
    ctx = OperationContext(runner, lambda *_: None, lambda: False)
    request = validate_request(GenerationRequest(
        prompt=PROMPT, seed=7, count=1, steps=2, sampler="euler", operation=OPERATION,
        params={"scale": 2, "strength": 0.35, "image_path": str(tmp_path / "gone.png")}),
        settings)

    plain = _pipe(folder, torch.bfloat16)
    plain.scheduler = make_scheduler("euler", plain.scheduler.config, ("euler",))
    source = plain(PROMPT, height=request.height, width=request.width, num_inference_steps=2,
                   guidance_scale=request.cfg,
                   generator=torch.Generator("cpu").manual_seed(7)).images[0]
    tuned = runner.txt2img([request.model_copy(update={"operation": "txt2img", "params": {}})],
                           lambda *_: None, lambda: False)[0].images[0]
    assert not _same(tuned, source)

    (upscaled,) = get_operation(OPERATION)(ctx, request)
    assert _same(upscaled, upscale_ops.enlarge(ctx, request, source, 2))
    assert not _same(upscaled, upscale_ops.enlarge(ctx, request, tuned, 2))
    assert _qkv_fused(runner.pipeline(settings.model).unet)  # tuned again afterwards


def _same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))
