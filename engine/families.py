"""Model families: what each architecture needs, and how to tell which one a model is.

Detection reads only small files (``model_index.json``, component ``config.json`` files, a
safetensors header), so the bot can validate requests without loading anything heavy.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from engine.errors import RequestError
from engine.samplers import DIFFUSION_SAMPLERS, FLOW_SAMPLERS
from engine.settings import DEMO_MODEL, EngineSettings

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")

#: The one answer to a model that is not allowed: it neither echoes the value nor tells a
#: missing path from an unreadable file, so the model option cannot probe the filesystem.
UNKNOWN_MODEL = "that model is not available here; pick one from the list"
#: Longest display name, leaving room for a " (2)" and under Discord's 100 for a choice.
NAME_LIMIT = 90

ASPECTS = ("1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3")
#: Any other width:height (a prompt's ``--ar``) may have one side at most this many times the
#: other: the size grid has no sizes past it.
MAX_ASPECT_RATIO = 4
_ASPECT = re.compile(r"([1-9][0-9]{0,3}):([1-9][0-9]{0,3})")


@dataclass(frozen=True)
class Family:
    """One model architecture (or a distilled variant of one that needs other defaults)."""

    name: str
    pipeline: str  # diffusers pipeline class name
    base_size: int  # native 1:1 edge in pixels
    size_multiple: int
    steps: int
    cfg: float
    sampler: str
    samplers: tuple[str, ...]
    latent_channels: int
    #: Classifier-free guidance (a second, negative-prompt pass per step) applies.
    uses_cfg: bool = True
    #: guidance_scale feeds a distilled guidance embedding instead of CFG (FLUX-dev).
    guidance_embedding: bool = False
    display: str = ""

    @property
    def native_sizes(self) -> dict[str, tuple[int, int]]:
        return {aspect: aspect_size(self, aspect) for aspect in ASPECTS}


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sd15", "StableDiffusionPipeline", 512, 8, 25, 7.0, "dpmpp_2m_karras",
               DIFFUSION_SAMPLERS, 4, display="Stable Diffusion 1.x"),
        Family("sd2", "StableDiffusionPipeline", 768, 8, 25, 7.0, "dpmpp_2m_karras",
               DIFFUSION_SAMPLERS, 4, display="Stable Diffusion 2.x"),
        Family("sdxl", "StableDiffusionXLPipeline", 1024, 8, 30, 6.0, "dpmpp_2m_karras",
               DIFFUSION_SAMPLERS, 4, display="Stable Diffusion XL"),
        Family("sdxl-turbo", "StableDiffusionXLPipeline", 512, 8, 2, 0.0, "euler_a",
               DIFFUSION_SAMPLERS, 4, uses_cfg=False, display="SDXL Turbo"),
        Family("flux", "FluxPipeline", 1024, 16, 28, 3.5, "flow_euler", FLOW_SAMPLERS, 16,
               uses_cfg=False, guidance_embedding=True, display="FLUX.1 dev"),
        Family("flux-schnell", "FluxPipeline", 1024, 16, 4, 0.0, "flow_euler", FLOW_SAMPLERS,
               16, uses_cfg=False, display="FLUX.1 schnell"),
        Family("sd3", "StableDiffusion3Pipeline", 1024, 16, 28, 5.0, "flow_euler",
               FLOW_SAMPLERS, 16, display="Stable Diffusion 3"),
    )
}


@dataclass(frozen=True)
class ModelInfo:
    """What validation needs to know about a model, read from its small files only."""

    ref: str  # resolved reference: hub id, absolute folder or absolute .safetensors path
    family: Family
    width: int
    height: int
    steps: int
    cfg: float
    sampler: str
    name: str
    #: Local diffusers folder whose configs a single-file checkpoint loads with (offline).
    config: str | None = None

    @property
    def size_multiple(self) -> int:
        return self.family.size_multiple


def aspect_size(source: Family | ModelInfo, aspect: str) -> tuple[int, int]:
    """Native size for an aspect: the closest ratio at about the base size's pixel count.

    Among sizes on the grid that do not exceed the base pixel count, the one with the least
    combined (log) error in ratio and area wins. Models of 1024 px and up use a 64 px grid,
    which reproduces the published SDXL buckets (1344x768, 1152x896, 1216x832); smaller
    models use their family's size multiple.
    """
    match = _ASPECT.fullmatch(aspect)
    if match is None or max(a := int(match[1]), b := int(match[2])) > MAX_ASPECT_RATIO * min(a, b):
        raise RequestError("aspect", f"aspect must be width:height, such as "
                           f"{', '.join(ASPECTS)}, with one side at most {MAX_ASPECT_RATIO} "
                           "times the other")
    if isinstance(source, ModelInfo):
        multiple, area = source.size_multiple, source.width * source.height
    else:
        multiple, area = source.size_multiple, source.base_size**2
    step = 64 if area >= 1024 * 1024 else multiple
    ratio = max(a, b) / min(a, b)
    best: tuple[float, int, int] | None = None
    for long_edge in range(step, int(math.sqrt(area * ratio)) + 2 * step, step):
        short_edge = min(long_edge, area // long_edge // step * step)
        if short_edge < step:
            break
        score = (abs(math.log(long_edge / short_edge / ratio))
                 + abs(math.log(area / (long_edge * short_edge))))
        if best is None or score < best[0]:
            best = (score, long_edge, short_edge)
    _, long_edge, short_edge = best or (0.0, step, step)
    return (long_edge, short_edge) if a >= b else (short_edge, long_edge)


#: Where the shipped demo model lives; shown as ``demo`` wherever it is named.
DEMO_FOLDER = Path(__file__).parent / "demo" / "model"


def resolve_model(ref: str, settings: EngineSettings) -> str:
    """Turn a user-facing model reference into what the loader takes."""
    del settings  # references do not depend on settings today; kept for the agreed signature
    if ref == DEMO_MODEL:
        return str(DEMO_FOLDER)
    path = Path(ref).expanduser()
    if path.exists():
        return str(path.resolve())
    return ref


def display_name(ref: str) -> str:
    """What members see for a model: its folder, file or hub repository name, never a path.

    Read from the string alone, so naming a model touches no file.
    """
    if ref in (DEMO_MODEL, str(DEMO_FOLDER)):
        return DEMO_MODEL
    name = PurePath(ref.rstrip("/")).name.removesuffix(".safetensors")
    return (name or "model")[:NAME_LIMIT]


def model_names(settings: EngineSettings) -> dict[str, str]:
    """Display name -> allowed model, in the allowlist's order.

    A name that two models share (``/a/sd15`` and ``/b/sd15``) gets `` (2)`` on the later one,
    so every allowed model has a name of its own, whatever the case.
    """
    names: dict[str, str] = {}
    taken: set[str] = set()
    for ref in settings.allowed_models:
        base = name = display_name(ref)
        number = 2
        while name.casefold() in taken:
            name, number = f"{base} ({number})", number + 1
        taken.add(name.casefold())
        names[name] = ref
    return names


def pick_model(name: str, settings: EngineSettings) -> str:
    """The allowed model a member picked by its display name (any case).

    Strings only: nothing a member types reaches the filesystem, and anything else, a path
    included, gets :data:`UNKNOWN_MODEL`.
    """
    wanted = name.strip().casefold()
    for shown, ref in model_names(settings).items():
        if shown.casefold() == wanted:
            return ref
    raise RequestError("model", UNKNOWN_MODEL)


def allowed_model_info(ref: str, settings: EngineSettings) -> ModelInfo:
    """:func:`model_info` for the bot: only an allowed model, and no server detail in errors.

    ``ref`` is an allowlist entry or its resolved form (what a validated request carries); it
    is compared as a string before any file is read, and only allowlist entries are resolved.
    An allowed model that cannot be used is called by its display name; its path and the
    reason go to the log, for the admin.
    """
    shown = next((name for name, entry in model_names(settings).items()
                  if ref in (entry, resolve_model(entry, settings))), None)
    if shown is None:
        raise RequestError("model", UNKNOWN_MODEL)
    try:
        return model_info(ref, settings)
    except RequestError as error:
        log.warning("allowed model %s cannot be used: %s", ref, error)
        raise RequestError("model", f"model {shown} cannot be used right now; the bot's "
                           "admin can see why in its log") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def hub_folder(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model, without touching the network."""
    from huggingface_hub import try_to_load_from_cache

    if not _HUB_ID.fullmatch(repo_id):
        return None
    try:
        found = try_to_load_from_cache(repo_id, "model_index.json")
    except ValueError:  # huggingface_hub's HFValidationError for odd names
        return None
    return Path(found).parent if isinstance(found, str) else None


def family_from_folder(folder: Path, hint: str = "") -> str | None:
    """Family from a diffusers folder: the pipeline class, refined by component configs."""
    index = _read_json(folder / "model_index.json")
    name = str(index.get("_class_name", ""))
    if name.startswith("StableDiffusionXL"):
        return "sdxl-turbo" if "turbo" in hint.lower() else "sdxl"
    if name.startswith("Flux"):
        config = _read_json(folder / "transformer" / "config.json")
        return "flux" if config.get("guidance_embeds", True) else "flux-schnell"
    if name.startswith("StableDiffusion3"):
        return "sd3"
    if name.startswith("StableDiffusion"):
        unet = _read_json(folder / "unet" / "config.json")
        return "sd2" if unet.get("cross_attention_dim") == 1024 else "sd15"
    return None


def family_from_keys(keys: set[str], hint: str = "") -> str | None:
    """Family from an original-layout (non-diffusers) checkpoint's state-dict keys."""
    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in keys)

    if has("model.diffusion_model.joint_blocks.") or has("joint_blocks."):
        return "sd3"
    if has("model.diffusion_model.double_blocks.") or has("double_blocks."):
        guided = has("model.diffusion_model.guidance_in.") or has("guidance_in.")
        return "flux" if guided else "flux-schnell"
    if has("conditioner.embedders.1."):
        return "sdxl-turbo" if "turbo" in hint.lower() else "sdxl"
    if has("cond_stage_model.model."):
        return "sd2"
    if has("cond_stage_model.transformer.") or has("model.diffusion_model.input_blocks."):
        return "sd15"
    return None


def _safetensors_keys(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys())


def _sidecar(path: Path) -> dict[str, Any]:
    """A model's own settings: ``imaginebot.json`` in its folder, or ``<stem>.imaginebot.json``
    next to a single-file checkpoint."""
    if path.is_dir():
        return _read_json(path / "imaginebot.json")
    return _read_json(path.with_name(path.stem + ".imaginebot.json"))


def model_info(ref: str, settings: EngineSettings) -> ModelInfo:
    """Cheap facts about a model; a RequestError when it cannot be used."""
    resolved = resolve_model(ref, settings)
    path = Path(resolved)
    sidecar: dict[str, Any] = {}
    config: str | None = None
    family_name: str | None = None
    if path.is_dir():
        sidecar = _sidecar(path)
        family_name = sidecar.get("family") or family_from_folder(path, resolved)
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise RequestError("model", f"model file {path.name} is not a .safetensors file")
        sidecar = _sidecar(path)
        if sidecar.get("config"):
            config = str((path.parent / str(sidecar["config"])).resolve())
        try:
            family_name = sidecar.get("family") or family_from_keys(
                _safetensors_keys(path), resolved)
        except Exception as error:  # a damaged header is the user's file, not our bug
            raise RequestError("model", f"cannot read model file {path.name}: {error}") from None
    else:
        folder = hub_folder(resolved)
        if folder is None:
            raise RequestError("model", f"model {ref} was not found (not a folder, a "
                               ".safetensors file, or a hub model in the local cache)")
        sidecar = _sidecar(folder)
        family_name = sidecar.get("family") or family_from_folder(folder, resolved)
    if family_name not in FAMILIES:
        raise RequestError("model", f"model {ref} is of no supported family "
                           f"({', '.join(FAMILIES)})")
    family = FAMILIES[family_name]
    defaults = sidecar.get("defaults", {}) if isinstance(sidecar.get("defaults"), dict) else {}
    return ModelInfo(
        ref=resolved,
        family=family,
        width=int(defaults.get("width", family.base_size)),
        height=int(defaults.get("height", family.base_size)),
        steps=int(defaults.get("steps", family.steps)),
        cfg=float(defaults.get("cfg", family.cfg)),
        sampler=str(defaults.get("sampler", family.sampler)),
        name=str(sidecar.get("name", display_name(ref))),
        config=config,
    )
