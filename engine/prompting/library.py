"""LoRA and embedding files: finding them by name, checking them against a model, hashing them.

Cheap enough for validation in the bot: only directory listings and safetensors headers are
read, plus one sha256 of each file a request uses (cached by path, size and mtime). Names that
members type are matched against the listing, never joined onto a path.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from engine.errors import RequestError
from engine.families import ModelInfo
from engine.prompting.syntax import has_explicit_weights, parse_attention, split_loras
from engine.settings import EngineSettings

#: Families whose UNet and CLIP text encoders take LoRAs, embeddings and A1111 weighting.
CLIP_FAMILIES = frozenset({"sd15", "sd2", "sdxl", "sdxl-turbo"})
#: Cross-attention width (the text embedding size the UNet reads) of full-size models, for
#: single-file checkpoints whose configs are not on disk.
_CROSS_ATTENTION = {"sd15": 768, "sd2": 1024, "sdxl": 2048, "sdxl-turbo": 2048}
_TEXT_WIDTHS = {"sd15": (768,), "sd2": (1024,), "sdxl": (768, 1280), "sdxl-turbo": (768, 1280)}
_LORA_DOWN = re.compile(r"(lora_down|lora_A|lora\.down|lora_linear_layer\.down)\.weight$")
_LORA_KEY = re.compile(r"(lora_down|lora_up|lora_A|lora_B|lora\.down|lora\.up)")
_HEADER_LIMIT = 100 * 1024 * 1024
#: Characters of the sha256 that A1111 writes as a file's short hash.
SHORT_HASH = 12


class Network(BaseModel):
    """A LoRA or an embedding a request uses, as validation found it: what remakes it exactly."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["lora", "embedding"]
    name: str
    weight: float = 1.0
    #: The first 12 hex digits of the file's sha256, as A1111's "Lora hashes" has them.
    hash: str


@dataclass(frozen=True)
class Found:
    name: str
    path: Path


def listing(folder: Path | None) -> dict[str, Found]:
    """casefolded name -> file, for every ``.safetensors`` under ``folder`` (subfolders too).

    The name is the file's stem, as in A1111; of two files with one stem the first in path
    order wins.
    """
    found: dict[str, Found] = {}
    if folder is None or not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*.safetensors")):
        if path.is_file():
            found.setdefault(path.stem.casefold(), Found(path.stem, path))
    return found


def names(folder: Path | None) -> list[str]:
    """The LoRA or embedding names in ``folder``, sorted as people read them (``/loras``)."""
    return sorted((found.name for found in listing(folder).values()), key=str.casefold)


def read_header(path: Path) -> dict[str, Any]:
    """A safetensors file's tensor table (name -> dtype, shape, offsets), without the tensors."""
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError("too short")
        (size,) = struct.unpack("<Q", raw)
        if size > _HEADER_LIMIT:
            raise ValueError("header too large")
        header = json.loads(handle.read(size))
    if not isinstance(header, dict):
        raise ValueError("no tensor table")
    header.pop("__metadata__", None)
    return header


_hashes: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def short_hash(path: Path) -> str:
    """The file's sha256, first 12 hex digits; cached while the file is unchanged."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        known = _hashes.get(key)
    if known is None:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        known = digest.hexdigest()[:SHORT_HASH]
        with _hash_lock:
            _hashes[key] = known
    return known


def _model_folder(info: ModelInfo) -> Path | None:
    """The diffusers folder whose component configs describe the model, when there is one."""
    for candidate in (info.ref, info.config):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _config(info: ModelInfo, component: str) -> dict[str, Any]:
    folder = _model_folder(info)
    if folder is None:
        return {}
    try:
        data = json.loads((folder / component / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cross_attention_width(info: ModelInfo) -> int:
    width = _config(info, "unet").get("cross_attention_dim")
    return int(width) if isinstance(width, int) else _CROSS_ATTENTION[info.family.name]


def text_widths(info: ModelInfo) -> tuple[int, ...]:
    """Hidden size of each CLIP text encoder, in the pipeline's order."""
    defaults = _TEXT_WIDTHS[info.family.name]
    widths = []
    for i, component in enumerate(("text_encoder", "text_encoder_2")[:len(defaults)]):
        value = _config(info, component).get("hidden_size")
        widths.append(int(value) if isinstance(value, int) else defaults[i])
    return tuple(widths)


def check_lora(name: str, path: Path, info: ModelInfo) -> None:
    """Refuse a file diffusers would not load as a LoRA into this model, by its key names and
    the width of its cross-attention keys (768 for SD 1.x, 1024 for 2.x, 2048 for XL)."""
    try:
        header = read_header(path)
    except (OSError, ValueError):
        raise RequestError("prompt", f"LoRA {name} is not a readable .safetensors file") \
            from None
    if not any(_LORA_KEY.search(key) for key in header):
        raise RequestError("prompt", f"file {name} is not a LoRA")
    widths = {int(entry["shape"][1]) for key, entry in header.items()
              if "attn2" in key and "to_k" in key and _LORA_DOWN.search(key)
              and len(entry.get("shape", ())) == 2}
    if not widths:
        raise RequestError("prompt", f"LoRA {name} has no UNet cross-attention layers, so it "
                           f"cannot be checked against {info.name}; it is not used here")
    if widths != {cross_attention_width(info)}:
        raise RequestError("prompt", f"LoRA {name} is for another kind of model than "
                           f"{info.name} ({info.family.display or info.family.name})")


def check_embedding(name: str, path: Path, info: ModelInfo) -> None:
    """Refuse a file that is no textual-inversion embedding for this model's text encoders:
    one 2-D tensor of the encoder's width (SD 1.x, 2.x), or ``clip_l`` and ``clip_g`` (XL)."""
    try:
        header = read_header(path)
    except (OSError, ValueError):
        raise RequestError("prompt", f"embedding {name} is not a readable .safetensors file") \
            from None
    shapes = {key: tuple(entry.get("shape", ())) for key, entry in header.items()}
    if not shapes or any(len(shape) != 2 for shape in shapes.values()):
        raise RequestError("prompt", f"file {name} is not a textual-inversion embedding")
    widths = text_widths(info)
    if len(widths) == 2:
        found: tuple[int, ...] = (shapes.get("clip_l", (0, 0))[1], shapes.get("clip_g", (0, 0))[1])
    else:
        found = (next(iter(shapes.values()))[1],) if len(shapes) == 1 else (0,)
    if found != widths:
        raise RequestError("prompt", f"embedding {name} is for another kind of model than "
                           f"{info.name} ({info.family.display or info.family.name})")


def embeddings_in(texts: Iterable[str], settings: EngineSettings) -> list[Found]:
    """The embeddings whose token (the file stem) appears in any of ``texts``.

    A substring counts, in any case: the tokenizer splits an added token out of any text that
    contains it, so it changes how such a prompt encodes, and the image depends on it.
    """
    folded = [text.casefold() for text in texts]
    return [found for key, found in sorted(listing(settings.embeddings_dir).items())
            if any(key in text for text in folded)]


def resolve_networks(prompt: str, negative: str, info: ModelInfo,
                     settings: EngineSettings) -> tuple[Network, ...]:
    """The LoRAs and embeddings a prompt uses, checked against the model; a RequestError that
    names the first bad one. Also refuses weights for families that cannot apply them."""
    text, tags = split_loras(prompt)
    if split_loras(negative)[1]:
        raise RequestError("negative_prompt", "LoRA tags belong in the prompt, not in the "
                           "negative prompt")
    family = info.family
    if family.name not in CLIP_FAMILIES:
        if tags:
            raise RequestError("prompt", f"LoRAs work here only with Stable Diffusion 1.x, 2.x "
                               f"and XL models, not with {family.display or family.name}")
        for label, value in (("prompt", prompt), ("negative_prompt", negative)):
            if has_explicit_weights(value):
                raise RequestError(label, f"{family.display or family.name} models read the "
                                   "prompt through T5, which has no (word:1.2) weights; "
                                   "write the prompt without them")
        return ()
    if tags and settings.quantize == "fp8":
        # peft adds LoRA layers only to nn.Linear, which FP8 weights (engine.speed) replace
        raise RequestError("prompt", "LoRAs are off on this bot: it runs its models in FP8 "
                           "for speed, which LoRAs cannot be added to")
    parse_attention(text)  # refuses a weight that is no number
    parse_attention(negative)
    networks: list[Network] = []
    loras = listing(settings.lora_dir)
    for tag in tags:
        found = loras.get(tag.name.casefold())
        if found is None:
            raise RequestError("prompt", f"unknown LoRA '{tag.name}'; the loras command lists "
                               "the ones available")
        check_lora(found.name, found.path, info)
        networks.append(Network(kind="lora", name=found.name, weight=tag.weight,
                                hash=short_hash(found.path)))
    for found in embeddings_in((text, negative), settings):
        check_embedding(found.name, found.path, info)
        networks.append(Network(kind="embedding", name=found.name, hash=short_hash(found.path)))
    return tuple(networks)


def check_unchanged(recorded: Iterable[Network], current: Iterable[Network]) -> None:
    """A request that recorded a file's hash runs only with that file (remakes stay exact)."""
    now = {(network.kind, network.name.casefold()): network for network in current}
    for network in recorded:
        found = now.get((network.kind, network.name.casefold()))
        if found is not None and found.hash != network.hash:
            what = "LoRA" if network.kind == "lora" else "embedding"
            raise RequestError("prompt", f"{what} {network.name} has changed since this "
                               "image was made, so it cannot be remade exactly")
