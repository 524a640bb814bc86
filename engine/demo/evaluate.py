"""Measure whether the demo model follows its prompts, through the engine's own runner.

    .venv/bin/python -m engine.demo.evaluate [--model engine/demo/model] [--prompts 64]

Every image is made by :class:`engine.runner.Runner`, the code path a real SD 1.5 checkpoint
takes, and read back by :mod:`engine.demo.checker`. Seeds follow the engine's contract: image i
of a request with seed S uses ``torch.Generator("cpu").manual_seed(S + i)``, and a variation
starts from ``slerp(t, noise(S), noise(V))``. The pytest suite runs the same functions on a
small sample.
"""

from __future__ import annotations

import argparse
import io
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from engine.demo import dataset
from engine.demo.checker import Reading, read_image
from engine.request import GenerationRequest, validate_request
from engine.runner import Runner
from engine.settings import EngineSettings

MODEL_DIR = Path(__file__).parent / "model"
#: Seed of the first request in every measurement; request k uses BASE_SEED + 1000 * k.
BASE_SEED = 1000
VARIATION_OFFSET = 500_000


@dataclass(frozen=True)
class Prompt:
    """An evaluation prompt with the attributes it asks for."""

    text: str
    color: str
    shape: str
    background: str
    position: str | None


@dataclass(frozen=True)
class DemoModel:
    """The engine's runner with the model loaded, and the settings that name the model."""

    runner: Runner
    settings: EngineSettings


def load(folder: Path = MODEL_DIR) -> DemoModel:
    settings = EngineSettings(model=str(folder), device="cpu", dtype="float32", preview_every=0,
                              max_count=8)
    runner = Runner(settings)
    runner.model(settings.model)
    return DemoModel(runner, settings)


def prompts(count: int, seed: int = 7) -> list[Prompt]:
    """Fully specified prompts (half also name a position), different from training seeds."""
    rng = random.Random(seed)
    out = []
    for k in range(count):
        shape = dataset.SHAPES[k % len(dataset.SHAPES)]
        color = rng.choice(list(dataset.COLORS))
        background = rng.choice([c for c in dataset.COLORS if c != color])
        position = rng.choice(list(dataset.POSITIONS)) if k % 2 else None
        size = rng.choice([None, *dataset.SIZES])
        text = dataset.caption_for(rng, shape, color, background, position, size)
        out.append(Prompt(text, color, shape, background, position))
    return out


def generate(model: DemoModel, prompt: str, seed: int, count: int = 1,
             negative: str = "", cfg: float | None = None, sampler: str | None = None,
             variation_seed: int | None = None,
             variation_strength: float = 0.0) -> list[Image.Image]:
    """One request at the model's own defaults (imaginebot.json) unless overridden."""
    request = validate_request(GenerationRequest(
        prompt=prompt, negative_prompt=negative, seed=seed, count=count, cfg=cfg,
        sampler=sampler, variation_seed=variation_seed,
        variation_strength=variation_strength), model.settings)
    [output] = model.runner.txt2img([request], lambda *_: None, lambda: False)
    return list(output.images)


def attribute_accuracy(model: DemoModel, items: Sequence[Prompt], seeds: int,
                       cfg: float | None = None) -> dict[str, float]:
    """Fraction of images whose colour/background/shape/position match the prompt."""
    hits = {"color": 0, "background": 0, "shape": 0, "position": 0}
    total = positioned = 0
    for k, item in enumerate(items):
        for image in generate(model, item.text, BASE_SEED + 1000 * k, seeds, cfg=cfg):
            seen = read_image(image)
            total += 1
            hits["color"] += seen.color == item.color
            hits["background"] += seen.background == item.background
            hits["shape"] += seen.shape == item.shape
            if item.position is not None:
                positioned += 1
                hits["position"] += seen.position == item.position
    return {name: value / (positioned if name == "position" else total)
            for name, value in hits.items()}


def color_rate(model: DemoModel, prompt: str, color: str, seeds: int,
               negative: str = "", cfg: float | None = None) -> float:
    """Fraction of ``seeds`` images whose shape reads as ``color``."""
    images = []
    for start in range(0, seeds, 8):
        images += generate(model, prompt, BASE_SEED + start, min(8, seeds - start),
                           negative=negative, cfg=cfg)
    return sum(read_image(image).color == color for image in images) / seeds


def variation_keep_rate(model: DemoModel, items: Sequence[Prompt],
                        strength: float = 0.25) -> float:
    """Fraction of subtle variations that keep the original's colour and shape."""
    kept = 0
    for k, item in enumerate(items):
        seed = BASE_SEED + 1000 * k
        original: Reading = read_image(generate(model, item.text, seed)[0])
        varied = read_image(generate(model, item.text, seed, variation_seed=seed + VARIATION_OFFSET,
                                     variation_strength=strength)[0])
        kept += (original.color, original.shape) == (varied.color, varied.shape)
    return kept / len(items)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--negative-seeds", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.monotonic()
    model = load(args.model)
    items = prompts(args.prompts)
    default = attribute_accuracy(model, items, args.seeds)
    unguided = attribute_accuracy(model, items, args.seeds, cfg=1.0)
    circle = "a circle on a white background"
    red_plain = color_rate(model, circle, "red", args.negative_seeds)
    red_negative = color_rate(model, circle, "red", args.negative_seeds, negative="red")
    variations = variation_keep_rate(model, items)
    first = png_bytes(generate(model, items[0].text, BASE_SEED)[0])
    same = first == png_bytes(generate(model, items[0].text, BASE_SEED)[0])
    print(f"model: {args.model}")
    print(f"| measure ({args.prompts} prompts x {args.seeds} seeds) | default cfg | cfg 1.0 |")
    print("|---|---|---|")
    for name in default:
        print(f"| {name} correct | {default[name]:.1%} | {unguided[name]:.1%} |")
    print(f"\n'{circle}', {args.negative_seeds} seeds: red {red_plain:.1%} without negative, "
          f"{red_negative:.1%} with negative prompt 'red'")
    print(f"subtle variations (strength 0.25) keeping colour and shape: {variations:.1%}")
    print(f"same seed and settings give byte-identical PNGs: {same}")
    print(f"evaluation took {time.monotonic() - start:.0f}s")


if __name__ == "__main__":
    main()
