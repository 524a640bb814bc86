"""``imaginebot generate`` and ``imaginebot make-test-model``: the engine without Discord.

``generate`` goes through :class:`engine.client.EngineClient` and its worker process, the same
path the bot uses. Heavy imports (torch, diffusers) happen only inside the commands, so building
the bot's parser stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from engine.settings import EngineSettings


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="what to draw; flags at its end (--ar 16:9 --no text "
                        "--seed N --steps N --cfg X --style NAME --sampler NAME) set what the "
                        "options below do not")
    parser.add_argument("--model", default="", help="any model: a hub id from the local cache, "
                        "a diffusers folder or a .safetensors file (default: IMAGINEBOT_MODEL)")
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--seed", type=int, help="seed of the first image (default: random)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument("--cfg", type=float, help="guidance scale (default: the model's)")
    parser.add_argument("--sampler", help="sampler name, e.g. euler_a or dpmpp_2m_karras")
    parser.add_argument("--width", type=int, help="image width in pixels")
    parser.add_argument("--height", type=int, help="image height in pixels")
    parser.add_argument("--count", type=int, default=4, help="number of images (default: 4)")
    parser.add_argument("--style", help="a style of IMAGINEBOT_STYLES_FILE (an AUTOMATIC1111 "
                        "styles.csv)")
    parser.add_argument("--image", type=Path, metavar="PATH",
                        help="image prompt: start from this PNG, JPEG or WebP (img2img)")
    parser.add_argument("--strength", type=float, help="how much of the --image to redraw, "
                        "above 0 to 1 (default: 0.6)")
    parser.add_argument("--variation-seed", type=int, help="seed of the variation noise")
    parser.add_argument("--variation-strength", type=float, default=0.0,
                        help="how much variation noise to mix in, 0 to 1")
    parser.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"],
                        help="device (overrides IMAGINEBOT_DEVICE)")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"],
                        help="weight dtype (overrides IMAGINEBOT_DTYPE)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="folder for the images and grid.png (default: a new folder "
                        "under IMAGINEBOT_OUTPUT_DIR)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with the results instead of text")


def add_make_test_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", required=True, help="sd15, sdxl, flux or sd3")
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder to write the model to")


def _fail(message: str, status: int = 2) -> int:
    print(f"imaginebot: {message}", file=sys.stderr)
    return status


def generate_command(args: argparse.Namespace, settings: EngineSettings) -> int:
    from engine.errors import RequestError
    from engine.flags import parse_flags
    from engine.request import GenerationRequest, validate_request
    from engine.styles import apply_style

    overrides: dict[str, Any] = {}
    if args.device:
        overrides["device"] = args.device
    if args.dtype:
        overrides["dtype"] = args.dtype
    # The engine writes to output_dir/job_id, so --out DIR is DIR's parent plus DIR's name.
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    if args.out is not None:
        out = args.out.expanduser().resolve()
        if not out.name:
            return _fail(f"--out must name a folder, not {args.out}")
        overrides["output_dir"], job_id = out.parent, out.name
    settings = settings.model_copy(update=overrides)
    try:
        flags = parse_flags(args.prompt)
        width, height = args.width, args.height
        if flags.aspect is not None and width is None and height is None:
            width, height = _aspect_size(args.model or settings.model, flags.aspect, settings)
        request = flags.apply(GenerationRequest(
            job_id=job_id, prompt=args.prompt, negative_prompt=args.negative, model=args.model,
            width=width, height=height, steps=args.steps, cfg=args.cfg,
            sampler=args.sampler, seed=args.seed, count=args.count,
            variation_seed=args.variation_seed, variation_strength=args.variation_strength))
        if style := args.style or flags.style:
            request = apply_style(request, style, settings.styles_file)
        if args.image is not None:
            request = _with_image(request, args.image, args.strength, settings)
        elif args.strength is not None:
            return _fail("--strength applies to an image prompt: add --image PATH")
        # Fail fast, before the worker process and torch start. The person at the shell owns
        # the machine: the allowlist (IMAGINEBOT_MODELS) is for Discord members, not for them.
        validate_request(request, settings, any_model=True)
    except RequestError as error:
        return _fail(str(error))
    try:
        return asyncio.run(_generate(request, settings, as_json=args.json))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _aspect_size(model: str, aspect: str, settings: EngineSettings) -> tuple[int, int]:
    from engine.families import aspect_size, model_info

    return aspect_size(model_info(model, settings), aspect)


def _with_image(request: Any, path: Path, strength: float | None,
                settings: EngineSettings) -> Any:
    """``request`` with the image at ``path`` as its image prompt, stored with the outputs."""
    from engine.errors import RequestError
    from engine.image_prompt import check_size, prepare
    from engine.request import DEFAULT_STRENGTH, check_strength, validate_request

    check_strength(DEFAULT_STRENGTH if strength is None else strength)
    limit = settings.image_prompt_max_bytes
    try:
        check_size(path.stat().st_size, limit)
        data = path.read_bytes()
    except OSError as error:
        raise RequestError("image", f"cannot read {path}: {error.strerror or error}") from None
    resolved = validate_request(request, settings, any_model=True)
    assert resolved.width and resolved.height
    digest = prepare(data, resolved.width, resolved.height, settings.output_dir, limit)
    return request.model_copy(update={"source_image": digest, "strength": strength,
                                      "width": resolved.width, "height": resolved.height})


async def _generate(request: Any, settings: EngineSettings, *, as_json: bool) -> int:
    from engine.client import EngineClient
    from engine.errors import EngineStartError
    from engine.events import Done, Failed, Progress

    try:
        async with EngineClient(settings, any_model=True) as client:
            async for event in client.submit(request):
                if isinstance(event, Progress) and not as_json:
                    print(f"\rstep {event.step}/{event.total}", end="", file=sys.stderr,
                          flush=True)
                elif isinstance(event, Failed):
                    if not as_json:
                        print(file=sys.stderr)
                    return _fail(event.reason, 2 if event.kind == "invalid" else 1)
                elif isinstance(event, Done):
                    _report(event, as_json=as_json)
    except EngineStartError as error:
        return _fail(f"the engine could not start: {error}", 1)
    return 0


def _report(done: Any, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "images": [{"path": str(image.path), "seed": image.seed} for image in done.images],
            "grid": str(done.grid) if done.grid else None,
            "model": done.metadata.get("model"),
            "sampler": done.metadata.get("sampler"),
            "seconds": round(done.seconds, 3),
        }))
        return
    print(file=sys.stderr)
    for image in done.images:
        print(f"{image.path}  (seed {image.seed})")
    if done.grid:
        print(f"{done.grid}  (grid)")
    print(f"done in {done.seconds:.1f} s", file=sys.stderr)


def make_test_model_command(args: argparse.Namespace) -> int:
    from engine.testmodels import make_test_model

    try:
        folder = make_test_model(args.family, args.dir)
    except ValueError as error:
        return _fail(str(error))
    except OSError as error:
        return _fail(f"could not write {args.dir}: {error.strerror or error}", 1)
    print(folder)
    return 0
