"""LoRA switching: what a batch costs when its LoRA set differs from the previous batch's.

A Runner on the tiny SD1.5 benchmark model (bench.engine_overhead's) runs rounds of batches:
no LoRA, LoRA A, LoRA B, A + B, then A twice more. Every batch but the repeated one switches the
adapters (set_adapters, or LoRA off); the repeat keeps them, so it separates the switch from the
cost of running with peft's LoRA layers at all. The switch itself (apply_networks, which
txt2img calls first) is also timed alone, before each batch: whole batches on a shared CPU vary
by more than it costs. The first round, which loads both files, is reported on its own. Times
are medians; ratios are to the batch without LoRA.

    .venv/bin/python -m bench.lora_switch [--requests 6] [--threads 1] [--json]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from bench.engine_overhead import bench_model, engine_settings, main, make_request
from engine.prompting.networks import apply_networks
from engine.request import validate_request
from engine.runner import Runner

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")
ROUND = (("none", ""), ("A", "<lora:a:0.8>"), ("B", "<lora:b:0.6>"),
         ("A+B", "<lora:a:0.5> <lora:b:0.5>"), ("A", "<lora:a:0.8>"),
         ("A again", "<lora:a:0.8>"))


def random_lora(runner: Runner, model: str, seed: int) -> dict[str, torch.Tensor]:
    """A rank-8 LoRA (diffusers format) on every attention projection of UNet and text encoder."""
    pipe = runner.pipeline(model)
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for component in ("unet", "text_encoder"):
        for name, module in getattr(pipe, component).named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(ATTENTION):
                tensors[f"{component}.{name}.lora_A.weight"] = torch.randn(
                    8, module.in_features, generator=generator) * 0.1
                tensors[f"{component}.{name}.lora_B.weight"] = torch.randn(
                    module.out_features, 8, generator=generator) * 0.1
    return tensors


async def measure(requests: int) -> dict[str, Any]:
    """``requests`` rounds after the first; each batch is one 2-image request."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = bench_model(root / "model")
        loras = root / "loras"
        loras.mkdir()
        settings = engine_settings(model, root / "out", lora_dir=loras, preview_every=0)
        runner = Runner(settings)
        for name, seed in (("a", 1), ("b", 2)):
            save_file(random_lora(runner, str(model), seed), str(loras / f"{name}.safetensors"))
        times: dict[str, list[float]] = {label: [] for label, _ in ROUND}
        switches: dict[str, list[float]] = {label: [] for label, _ in ROUND}
        first_load = 0.0
        loaded = runner.model(str(model))
        for round_index in range(requests + 1):
            for label, tags in ROUND:
                request = validate_request(make_request(round_index, prompt=f"a red circle "
                                                        f"{tags}"), settings)
                started = time.perf_counter()
                apply_networks(loaded.pipeline, loaded.networks, [request], settings)
                switched = time.perf_counter()
                runner.txt2img([request], lambda *_: None, lambda: False)
                elapsed = time.perf_counter() - switched
                if round_index == 0:
                    first_load = max(first_load, switched - started)
                else:
                    times[label].append(elapsed)
                    switches[label].append(switched - started)
    median = {label: statistics.median(values) for label, values in times.items()}
    none = median["none"]
    result: dict[str, Any] = {f"{label} (s)": round(value, 3) for label, value in median.items()}
    result |= {f"{label} / none": round(value / none, 3) for label, value in median.items()
               if label != "none"}
    for label, values in switches.items():
        switch = statistics.median(values)
        result[f"switch to {label} (ms)"] = round(1000 * switch, 2)
        result[f"switch to {label} / none"] = round(switch / none, 4)
    result["first load of a LoRA (s)"] = round(first_load, 3)
    result["rounds"] = requests
    return result


if __name__ == "__main__":
    main(measure, __doc__ or "")
