"""Engine overhead: the same requests through EngineClient and through a plain diffusers pipeline.

The engine side pays for the worker process, pipes, previews and PNG encoding; the plain side is
StableDiffusionPipeline called in-process with the same prompt, size, steps, sampler and seeds.
Runs are interleaved (plain, engine, plain, ...) so load from other processes on a shared machine
hits both sides alike; worker start and the first model load are excluded from both.

    .venv/bin/python -m bench.engine_overhead [--requests 8] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import torch

from engine.client import EngineClient
from engine.events import Done
from engine.request import GenerationRequest
from engine.settings import EngineSettings
from engine.testmodels import make_test_model

#: Sized so one request costs roughly half a second on one idle CPU core.
SIZE, STEPS, COUNT, CFG = 64, 10, 2, 7.0


def bench_model(folder: Path) -> Path:
    """The tiny SD1.5 test model with a wider UNet, so the denoiser dominates as on a GPU."""
    from diffusers import UNet2DConditionModel

    make_test_model("sd15", folder)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=SIZE // 2, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        norm_num_groups=8, attention_head_dim=8)
    unet.save_pretrained(folder / "unet")
    return folder


def engine_settings(model: Path, output_dir: Path, **extra: Any) -> EngineSettings:
    return EngineSettings(model=str(model), device="cpu", dtype="float32",
                          output_dir=output_dir, **extra)


def make_request(seed: int, **extra: Any) -> GenerationRequest:
    fields: dict[str, Any] = {"prompt": f"a red circle at the top, number {seed}", "seed": seed,
                              "width": SIZE, "height": SIZE, "steps": STEPS, "cfg": CFG,
                              "sampler": "euler", "count": COUNT}
    return GenerationRequest(**{**fields, **extra})


def run_plain(pipe: Any, request: GenerationRequest) -> float:
    assert request.seed is not None
    started = time.perf_counter()
    pipe(request.prompt, negative_prompt=request.negative_prompt or None,
         height=request.height, width=request.width, num_inference_steps=request.steps,
         guidance_scale=request.cfg, num_images_per_prompt=request.count,
         generator=[torch.Generator("cpu").manual_seed(request.seed + i)
                    for i in range(request.count)])
    return time.perf_counter() - started


async def run_engine(client: EngineClient, request: GenerationRequest) -> float:
    started = time.perf_counter()
    result = await client.generate(request)
    if not isinstance(result, Done):
        raise RuntimeError(f"engine request failed: {result.reason}")
    return time.perf_counter() - started


async def measure(requests: int) -> dict[str, Any]:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    with tempfile.TemporaryDirectory() as tmp:
        model = bench_model(Path(tmp) / "model")
        pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        settings = engine_settings(model, Path(tmp) / "outputs")
        async with EngineClient(settings) as client:
            run_plain(pipe, make_request(0))  # warm-up: first-call costs on both sides
            await run_engine(client, make_request(0))
            plain, engine = [], []
            for seed in range(1, requests + 1):
                plain.append(run_plain(pipe, make_request(seed)))
                engine.append(await run_engine(client, make_request(seed)))
    return {
        "requests": requests, "size": SIZE, "steps": STEPS, "images_per_request": COUNT,
        "torch_threads": torch.get_num_threads(),
        "plain_seconds": round(sum(plain), 3), "engine_seconds": round(sum(engine), 3),
        "plain_per_request": round(statistics.median(plain), 3),
        "engine_per_request": round(statistics.median(engine), 3),
        "ratio_total": round(sum(engine) / sum(plain), 3),
        "ratio_median_pair": round(statistics.median(e / p for e, p in zip(engine, plain,
                                                                            strict=True)), 3),
    }


def use_threads(threads: int) -> None:
    """The same torch thread count here and in the worker (which reads it when it starts).

    One thread by default: on a shared machine, threads spin-waiting for each other make
    timings of small models swing far more than the overhead being measured.
    """
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


Measure = Callable[[int], Coroutine[Any, Any, dict[str, Any]]]


def print_result(result: dict[str, Any], as_json: bool) -> None:
    """A benchmark's figures: one JSON line for scripts, else one aligned ``key: value`` a line."""
    if as_json:
        print(json.dumps(result))
    else:
        width = max(map(len, result))
        for key, value in result.items():
            print(f"{key:>{width}}: {value}")


def main(benchmark: Measure = measure, doc: str = __doc__ or "") -> None:
    """The command line both engine benchmarks share: --requests, --threads, --json."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    use_threads(args.threads)
    result = asyncio.run(benchmark(args.requests))
    print_result(result, args.json)


if __name__ == "__main__":
    main()
