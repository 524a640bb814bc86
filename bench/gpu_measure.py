"""Building, timing, counting and checking one pipeline configuration of the GPU session.

Models are built with random weights from bench/gpu_configs.py straight on the device; text
encoders are not built, every configuration gets the same random prompt embeddings of the real
shapes. FLOPs are counted once per model on the meta device (no memory, no compute), so the
floor and the share of the GEMM ceiling cost nothing on the GPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.gpu_configs import GUIDANCE

GIB = 2**30


def vae_scale(spec: dict[str, Any]) -> int:
    return int(2 ** (len(spec["vae"]["block_out_channels"]) - 1))


def build(family: str, spec: dict[str, Any], device: torch.device | str,
          dtype: torch.dtype) -> Any:
    """A diffusers pipeline with seeded random weights, built on ``device`` in ``dtype``."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            vae = AutoencoderKL(**spec["vae"])
            pipe: Any
            if family == "sdxl":
                pipe = StableDiffusionXLPipeline(
                    vae=vae, unet=UNet2DConditionModel(**spec["denoiser"]),
                    scheduler=EulerDiscreteScheduler(**spec["scheduler"]),
                    text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)
            else:
                pipe = FluxPipeline(
                    vae=vae, transformer=FluxTransformer2DModel(**spec["denoiser"]),
                    scheduler=FlowMatchEulerDiscreteScheduler(**spec["scheduler"]),
                    text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)
    finally:
        torch.set_default_dtype(previous)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_embeddings(spec: dict[str, Any], device: torch.device,
                      dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random prompt embeddings with the real encoders' shapes, the same for every run."""
    shape = spec["embeddings"]
    generator = torch.Generator("cpu").manual_seed(1)
    tokens = torch.randn(1, shape["tokens"], shape["width"], generator=generator)
    pooled = torch.randn(1, shape["pooled"], generator=generator)
    return {"prompt_embeds": tokens.to(device, dtype),
            "pooled_prompt_embeds": pooled.to(device, dtype)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds of one call, the device's queue drained on both sides, and its value."""
    synchronize(device)
    started = time.perf_counter()
    value = call()
    synchronize(device)
    return time.perf_counter() - started, value


def fit(seconds: dict[int, float]) -> tuple[float, float]:
    """(fixed, per step) of the line through two (steps, seconds) points."""
    (short, t_short), (long, t_long) = sorted(seconds.items())
    per_step = (t_long - t_short) / (long - short)
    return t_short - short * per_step, per_step


def run_pipeline(pipe: Any, family: str, prompt: dict[str, torch.Tensor], size: int,
                 steps: int, batch: int, **extra: Any) -> Any:
    """One generation call, as /imagine makes it: ``batch`` images of one prompt."""
    return pipe(**prompt, height=size, width=size, num_inference_steps=steps,
                num_images_per_prompt=batch, guidance_scale=GUIDANCE[family],
                generator=torch.Generator("cpu").manual_seed(0), **extra)


def checked_run(pipe: Any, family: str, prompt: dict[str, torch.Tensor], size: int,
                steps: int, batch: int) -> dict[str, Any]:
    """Run ``steps`` (at least 2) and check the activations are finite and not degenerate.

    The latents' change over a step is the sampler's step size times the denoiser's output,
    so its spread is the denoiser's; the decoded images must be finite and not constant.
    Reads only what the pipeline hands out, so it works on compiled models too.
    """
    seen: list[torch.Tensor] = []

    def keep(_pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if step < 2:
            seen.append(tensors["latents"].detach().float().clone())
        return {}

    images = run_pipeline(pipe, family, prompt, size, steps, batch, output_type="np",
                          callback_on_step_end=keep,
                          callback_on_step_end_tensor_inputs=["latents"]).images
    change = seen[1] - seen[0]
    array = np.asarray(images, dtype=np.float32)
    result = {
        "latents_finite": bool(torch.isfinite(seen[1]).all()),
        "denoiser_output_std": float(change.std()),
        "images_finite": bool(np.isfinite(array).all()),
        "image_std": float(array.std()),
    }
    result["ok"] = (result["latents_finite"] and result["images_finite"]
                    and math.isfinite(result["denoiser_output_std"])
                    and result["denoiser_output_std"] > 0 and result["image_std"] > 0)
    return result


def count_flops(family: str, spec: dict[str, Any], size: int) -> dict[str, float]:
    """TFLOP per image: one sampler step (both CFG passes for SDXL) and one VAE decode.

    Counted by torch's FlopCounterMode on meta tensors: the models are built without memory
    and run without compute, in a second or two for the full-size ones.
    """
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel

    side = size // vae_scale(spec)
    emb = spec["embeddings"]
    with torch.device("meta"):
        if family == "sdxl":
            unet: Any = UNet2DConditionModel(**spec["denoiser"])
            passes = 2  # classifier-free guidance: the prompt and the empty negative
            inputs = {
                "sample": torch.randn(passes, unet.config.in_channels, side, side),
                "timestep": torch.tensor(999.0),
                "encoder_hidden_states": torch.randn(passes, emb["tokens"], emb["width"]),
                "added_cond_kwargs": {"text_embeds": torch.randn(passes, emb["pooled"]),
                                      "time_ids": torch.randn(passes, 6)}}
            with FlopCounterMode(display=False) as step:
                unet(**inputs)
        else:
            transformer: Any = FluxTransformer2DModel(**spec["denoiser"])
            tokens = (side // 2) ** 2
            with FlopCounterMode(display=False) as step:
                transformer(
                    hidden_states=torch.randn(1, tokens, transformer.config.in_channels),
                    encoder_hidden_states=torch.randn(1, emb["tokens"], emb["width"]),
                    pooled_projections=torch.randn(1, emb["pooled"]),
                    timestep=torch.tensor([1.0]), guidance=torch.tensor([3.5]),
                    img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(emb["tokens"], 3))
        vae: Any = AutoencoderKL(**spec["vae"])
        with FlopCounterMode(display=False) as decode:
            vae.decode(torch.randn(1, vae.config.latent_channels, side, side))
    return {"step_tflop": step.get_total_flops() / 1e12,
            "decode_tflop": decode.get_total_flops() / 1e12}


def gemm_tflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    """Measured dense matmul throughput of a large square product (the achievable ceiling)."""
    generator = torch.Generator(device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    for _ in range(3):
        a @ b
    seconds, _ = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * size**3 * repeats / seconds / 1e12


def fp8_gemm_tflops(device: torch.device, size: int, repeats: int = 10) -> float:
    """The same for e4m3 inputs through torch._scaled_mm (Ada/Hopper and newer)."""
    a = torch.randn(size, size, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(size, size, device=device).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=device)

    def product() -> Any:
        return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    for _ in range(3):
        product()
    seconds, _ = timed(lambda: [product() for _ in range(repeats)], device)
    return 2 * size**3 * repeats / seconds / 1e12


def reset_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peaks(device: torch.device) -> dict[str, float | None]:
    """Peak allocated and reserved GiB since the last reset (None off CUDA)."""
    if device.type != "cuda":
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB}


def drift(reference: list[Any], other: list[Any]) -> dict[str, Any]:
    """PSNR (dB over 8-bit pixels; "inf" when identical) and max |Δ| of two image lists."""
    a = np.stack([np.asarray(image, dtype=np.float64) for image in reference])
    b = np.stack([np.asarray(image, dtype=np.float64) for image in other])
    mse = float(np.mean((a - b) ** 2))
    return {"psnr_db": "inf" if mse == 0 else 10 * math.log10(255.0**2 / mse),
            "max_abs_diff": int(np.abs(a - b).max()), "images": len(reference)}


def torch_flags() -> dict[str, Any]:
    """The global math flags a timing ran under (read through torch's current API)."""
    backends = torch.backends
    return {"matmul_fp32": backends.cuda.matmul.fp32_precision,
            "cudnn_conv_fp32": backends.cudnn.conv.fp32_precision,  # type: ignore[attr-defined]
            "cudnn_benchmark": backends.cudnn.benchmark}
