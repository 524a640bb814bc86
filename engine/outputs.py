"""Saving results: PNGs that carry their settings the way AUTOMATIC1111 writes them, and grids.

The "parameters" text chunk lets users drop an image into AUTOMATIC1111 or ComfyUI (or
back into imaginebot) and get the same settings.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.request import GenerationRequest
from engine.samplers import A1111_NAMES

PARAMETERS_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt: "
# AUTOMATIC1111's own pattern for "Key: value" pairs (modules/infotext_utils.py re_param).
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SAMPLERS_BY_A1111 = {label: name for name, label in A1111_NAMES.items()}
#: ``fields(request)``: the "Key: value" pairs a plugin's operation adds to its PNGs' parameters.
ParameterFields = Callable[[GenerationRequest], Sequence[tuple[str, object]]]
_OPERATION_FIELDS: dict[str, ParameterFields] = {}


def operation_parameters(operation: str) -> Callable[[ParameterFields], ParameterFields]:
    """Register what operation ``operation`` records in its PNGs after the core fields.

    Put it in the operation's module: the worker, which writes the PNGs, imports that one.
    """
    def register(fields: ParameterFields) -> ParameterFields:
        _OPERATION_FIELDS[operation] = fields
        return fields

    return register


def _quote(value: object) -> str:
    """Quote values that would break the comma-separated line, as AUTOMATIC1111 does.

    Values starting with a quote are quoted too, which AUTOMATIC1111 forgets.
    """
    text = str(value)
    return json.dumps(text) if any(c in text for c in ",\n:") or text.startswith('"') else text


def _unquote(raw: str) -> str:
    if raw.startswith('"'):
        try:
            return str(json.loads(raw))
        except ValueError:  # a hand-written line with a stray quote: keep it as written
            pass
    return raw.strip()


def _one_line(text: str) -> str:
    """``text`` with each line break as a space.

    The format tells the prompt, the negative prompt and the settings apart by line, so a
    prompt's own "Negative prompt: …" or "Steps: …" line would be read back as ours. Every
    break that ``str.splitlines`` knows counts, not only "\\n": other readers split on more.
    """
    return " ".join(text.splitlines())


def a1111_parameters(request: GenerationRequest, seed: int, metadata: Mapping[str, Any],
                     index: int = 0) -> str:
    """``prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: Euler a, ...`` for image ``index``.

    Image i of a variation grid has the variation seed V + i, so each PNG alone remakes its
    image in AUTOMATIC1111. Earlier variations (imaginebot's own) are "seed@strength" words.
    The prompts are written on one line each (:func:`_one_line`).
    """
    sampler = str(metadata.get("sampler", request.sampler or ""))
    cfg = float(metadata.get("cfg", request.cfg or 0.0))
    fields: list[tuple[str, object]] = [
        ("Steps", metadata.get("steps", request.steps)),
        ("Sampler", A1111_NAMES.get(sampler, sampler)),
        ("CFG scale", f"{cfg:g}"),
        ("Seed", seed),
        ("Size", f"{metadata.get('width', request.width)}x"
                 f"{metadata.get('height', request.height)}"),
        ("Model", metadata.get("model", request.model)),
    ]
    if request.variation_seed is not None:
        fields += [("Variation seed", request.variation_seed + index),
                   ("Variation seed strength", f"{request.variation_strength:g}")]
    if request.earlier_variations:
        fields.append(("Earlier variations", " ".join(
            f"{earlier.seed}@{earlier.strength:g}" for earlier in request.earlier_variations)))
    # A1111's own fields for the files a prompt used: "name: short sha256, ..."
    for kind, key in (("lora", "Lora hashes"), ("embedding", "TI hashes")):
        used = [f"{net.name}: {net.hash}" for net in request.networks if net.kind == kind]
        if used:
            fields.append((key, ", ".join(used)))
    if request.source_image is not None:
        # A1111's img2img key, and the image prompt's sha256 (A1111 records none)
        fields += [("Denoising strength", f"{request.strength:g}"),
                   ("Init image hash", request.source_image)]
    if request.style:  # A1111 writes the merged prompt only; the name is ours
        fields.append(("Style", request.style))
    if request.operation in _OPERATION_FIELDS:
        fields += _OPERATION_FIELDS[request.operation](request)
    lines = [_one_line(request.prompt)]
    if request.negative_prompt:
        lines.append(NEGATIVE_PREFIX + _one_line(request.negative_prompt))
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict[str, Any]:
    """The settings in a "parameters" text, with imaginebot's names and types.

    Known fields become prompt, negative_prompt, steps, sampler, cfg, seed, width, height,
    model, variation_seed, variation_strength, earlier_variations (a list of
    ``{"seed", "strength"}``), strength, source_image and style; unknown fields keep their
    own name.
    """
    lines = text.strip("\n").split("\n")
    last = lines[-1] if lines and _PARAM.match(lines[-1]) and ": " in lines[-1] else None
    body = lines[:-1] if last is not None else lines
    prompt: list[str] = []
    negative: list[str] = []
    for line in body:
        if negative or line.startswith(NEGATIVE_PREFIX):
            negative.append(line.removeprefix(NEGATIVE_PREFIX) if not negative else line)
        else:
            prompt.append(line)
    result: dict[str, Any] = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    for key, raw in _PARAM.findall(last or ""):
        value = _unquote(raw)
        match key:
            case "Steps":
                result["steps"] = int(value)
            case "Sampler":
                result["sampler"] = _SAMPLERS_BY_A1111.get(value, value)
            case "CFG scale":
                result["cfg"] = float(value)
            case "Seed":
                result["seed"] = int(value)
            case "Size":
                width, _, height = value.partition("x")
                result["width"], result["height"] = int(width), int(height)
            case "Model":
                result["model"] = value
            case "Variation seed":
                result["variation_seed"] = int(value)
            case "Variation seed strength":
                result["variation_strength"] = float(value)
            case "Earlier variations":
                pairs = (word.partition("@") for word in value.split())
                result["earlier_variations"] = [
                    {"seed": int(seed), "strength": float(strength)} for seed, _, strength in pairs]
            case "Denoising strength":
                result["strength"] = float(value)
            case "Init image hash":
                result["source_image"] = value
            case "Style":
                result["style"] = value
            case _:
                result[key] = value
    return result


def save_png(image: Image.Image, path: Path, parameters: str, compression: int = 6) -> Path:
    """Write a PNG with a "parameters" tEXt chunk; parent folders are created.

    ``compression`` is the zlib level (0-9, IMAGINEBOT_PNG_COMPRESSION); every level decodes to
    the same pixels, and 6, zlib's default, writes the bytes Pillow writes when given none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    image.save(path, format="PNG", pnginfo=info, compress_level=compression)
    return path


def save_pngs(files: Sequence[tuple[Image.Image, Path, str]], compression: int = 6) -> list[Path]:
    """:func:`save_png` for each ``(image, path, parameters)``, at once, a thread each (up to
    one per CPU core).

    Pillow's zlib encoder releases the GIL, so a job's four images and its grid encode in
    parallel rather than one after the other. Returns when every file is written; the first
    error (an ``OSError`` for a full disk) is raised after the others have finished.
    """
    threads = max(1, min(len(files), os.cpu_count() or 1))
    with ThreadPoolExecutor(threads, thread_name_prefix="png") as pool:
        written = [pool.submit(save_png, image, path, parameters, compression)
                   for image, path, parameters in files]
    return [future.result() for future in written]


def read_parameters(source: Path | str | Image.Image) -> str | None:
    """The "parameters" text of a PNG, or None when it carries none."""
    if isinstance(source, Image.Image):
        value = source.info.get(PARAMETERS_KEY)
    else:
        with Image.open(source) as image:
            value = image.info.get(PARAMETERS_KEY)
    return value if isinstance(value, str) else None


def make_grid(images: Sequence[Image.Image], columns: int = 2) -> Image.Image:
    """Images tiled ``columns`` wide in reading order (four results make a 2x2 grid)."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    width = max(image.width for image in images)
    height = max(image.height for image in images)
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid.paste(image.convert("RGB"), (column * width, row * height))
    return grid
