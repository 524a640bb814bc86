"""Full-size SDXL and FLUX on one GPU: plain diffusers against the engine's settings.

Random weights built from bench/gpu_configs.py (no downloads), 1024x1024, 28 steps, 4 images
per call, the same precomputed random prompt embeddings on both sides. "plain" is what a
diffusers user gets by default: fp16 weights, the pipeline as built (SDPA attention, CFG
batched, SDXL's VAE upcast to fp32). "engine" is how the engine runs a model: bf16, channels_last
UNet/VAE, fused QKV projections, no VAE upcast (bf16 has fp32's range), and torch.compile of the
denoiser with --compile. Timings exclude model build and a short warm-up (compile included);
the report has seconds per image for each side and the speedup.

    python -m bench.gpu_bench [--smoke] [--models sdxl,flux] [--compile] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.gpu_configs import FULL, SMOKE
from engine.loading import optimise_for_cuda


def build(family: str, spec: dict[str, Any], device: str, dtype: torch.dtype) -> Any:
    """A diffusers pipeline with random weights, built straight on ``device`` in ``dtype``."""
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
            if family == "sdxl":
                return StableDiffusionXLPipeline(
                    vae=vae, unet=UNet2DConditionModel(**spec["denoiser"]),
                    scheduler=EulerDiscreteScheduler(**spec["scheduler"]),
                    text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)
            return FluxPipeline(
                vae=vae, transformer=FluxTransformer2DModel(**spec["denoiser"]),
                scheduler=FlowMatchEulerDiscreteScheduler(**spec["scheduler"]),
                text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)
    finally:
        torch.set_default_dtype(previous)


def embeddings(spec: dict[str, Any], device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Random prompt embeddings with the real encoders' shapes, the same for both sides."""
    shape = spec["embeddings"]
    generator = torch.Generator("cpu").manual_seed(1)
    tokens = torch.randn(1, shape["tokens"], shape["width"], generator=generator)
    pooled = torch.randn(1, shape["pooled"], generator=generator)
    return {"prompt_embeds": tokens.to(device, dtype),
            "pooled_prompt_embeds": pooled.to(device, dtype)}


def timed(call: Callable[[], Any], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    call()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def run_side(family: str, spec: dict[str, Any], side: str, args: argparse.Namespace,
             device: str) -> dict[str, Any]:
    dtype = args.plain_dtype if side == "plain" else torch.bfloat16
    pipe = build(family, spec, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    if side == "engine":
        optimise_for_cuda(pipe, dtype, args.compile)
    prompt = embeddings(spec, device, dtype)
    extra = {"guidance_scale": 3.5} if family == "flux" else {"guidance_scale": 6.0}

    def call(steps: int, pipe: Any = pipe) -> Any:
        return pipe(**prompt, height=args.size, width=args.size, num_inference_steps=steps,
                    num_images_per_prompt=args.batch, output_type="pil",
                    generator=torch.Generator("cpu").manual_seed(0), **extra)

    warmup = timed(lambda: call(args.warmup_steps), device)
    seconds = [timed(lambda: call(args.steps), device) for _ in range(args.runs)]
    best = min(seconds)
    result = {"dtype": str(dtype).removeprefix("torch."), "warmup_seconds": round(warmup, 2),
              "seconds_per_call": [round(s, 3) for s in seconds],
              "seconds_per_image": round(best / args.batch, 4)}
    if device == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="toy configs, 64x64, 2 steps: checks the script end to end on CPU")
    parser.add_argument("--models", default="sdxl,flux")
    parser.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    parser.add_argument("--runs", type=int, default=1, help="timed calls per side")
    parser.add_argument("--out", help="write the JSON report here too")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    configs = SMOKE if args.smoke else FULL
    args.size, args.steps, args.batch = (64, 2, 2) if args.smoke else (1024, 28, 4)
    args.warmup_steps = 2
    # fp16 is the plain default on a GPU; CPUs lack fast fp16 kernels, so smoke runs use fp32.
    args.plain_dtype = torch.float16 if device == "cuda" else torch.float32
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "torch": torch.__version__, "smoke": args.smoke, "compile": args.compile,
        "size": args.size, "steps": args.steps, "batch": args.batch, "models": {}}
    for family in args.models.split(","):
        sides = {side: run_side(family, configs[family], side, args, device)
                 for side in ("plain", "engine")}
        sides["speedup"] = round(sides["plain"]["seconds_per_image"]
                                 / sides["engine"]["seconds_per_image"], 3)
        report["models"][family] = sides
        print(json.dumps({family: sides}), flush=True)
    text = json.dumps(report, indent=2)
    print(text)
    targets = [args.out] if args.out else []
    if os.environ.get("OUT"):
        targets.append(os.path.join(os.environ["OUT"], "gpu_bench.json"))
    for target in targets:
        with open(target, "w") as file:
            file.write(text)


if __name__ == "__main__":
    main()
