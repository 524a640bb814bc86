"""What a user asks for, and the checks that turn it into something the engine can run."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from engine.errors import RequestError
from engine.families import ModelInfo, allowed_model_info, model_info
from engine.prompting.library import Network, check_unchanged, resolve_networks
from engine.samplers import A1111_NAMES, SAMPLERS

if TYPE_CHECKING:
    from engine.settings import EngineSettings

# A public module for plugins: RequestError and the sampler names are re-exported from here.
__all__ = ["A1111_NAMES", "DEFAULT_STRENGTH", "MAX_CFG", "MAX_VARIATION_DEPTH", "SAMPLERS",
           "SEED_LIMIT", "GenerationRequest", "RequestError", "Variation", "check_strength",
           "random_seed", "validate_request"]

SEED_LIMIT = 2**32
MAX_CFG = 30.0
#: How many variations of variations deep an image may be; each adds one noise draw.
MAX_VARIATION_DEPTH = 16
#: How much of an image prompt is redrawn when the user does not say (img2img strength).
DEFAULT_STRENGTH = 0.6
#: Fields added after requests were first stored, with their "nothing" value: a request that
#: does not use them is written without them, so its JSON (and crash digest) stays as before.
UNUSED_WHEN = {"source_image": None, "strength": None, "style": "", "networks": ()}


class Variation(BaseModel):
    """A variation already in the main seed's noise: slerp(strength, noise, noise(seed))."""

    model_config = ConfigDict(frozen=True)

    seed: int
    strength: float


class GenerationRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    prompt: str
    negative_prompt: str = ""
    model: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    seed: int | None = None
    count: int = 4
    variation_seed: int | None = None
    variation_strength: float = 0.0
    #: The variations the image being varied already carries, oldest first, so that a
    #: variation of a variation starts from that image and not from its grid's main seed.
    earlier_variations: tuple[Variation, ...] = ()
    operation: str = "txt2img"
    params: dict[str, Any] = Field(default_factory=dict)
    #: The image prompt (img2img): the sha256 of its PNG, stored by engine.image_prompt under
    #: ``output_dir/sources``; None for text to image.
    source_image: str | None = None
    #: How much of the image prompt is redrawn, above 0 to 1 (DEFAULT_STRENGTH when unset).
    strength: float | None = None
    #: The name of the style already merged into the prompts (engine.styles), for the record.
    style: str = ""
    #: The LoRAs (from the prompt's <lora:NAME:WEIGHT> tags) and embeddings the prompts use,
    #: with their files' hashes; filled in by validation (engine.prompting.library).
    networks: tuple[Network, ...] = ()

    @model_serializer(mode="wrap")
    def _leave_out_unused(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name, nothing in UNUSED_WHEN.items():
            if name in data and getattr(self, name) == nothing:
                del data[name]
        return data


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _check_range(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise RequestError(field, f"{field} must be between {_number(low)} and {_number(high)}")


def random_seed(count: int = 1) -> int:
    """A seed whose ``count`` images (seed + i) all have seeds a user can type back in."""
    return secrets.randbelow(SEED_LIMIT - count + 1)


def _check_seed(field: str, seed: int, count: int) -> None:
    highest = SEED_LIMIT - count
    if not 0 <= seed <= highest:
        images = f" for {count} images (they use {field} + 0 to {count - 1})" if count > 1 else ""
        raise RequestError(field, f"{field} must be between 0 and {highest}{images}")


def _snap_size(field: str, value: int, multiple: int) -> int:
    if value < multiple:
        raise RequestError(field, f"{field} must be at least {multiple} pixels")
    return max(multiple, round(value / multiple) * multiple)


def check_strength(strength: float) -> None:
    """img2img redraws ``int(steps * strength)`` steps: 0 would redraw nothing."""
    if not 0 < strength <= 1:
        raise RequestError("strength", "strength must be above 0 and at most 1")


def _image_prompt_strength(request: GenerationRequest) -> float | None:
    """The strength of a request with an image prompt; None without one."""
    if request.source_image is None:
        if request.strength is not None:
            raise RequestError("strength", "strength needs an image prompt to apply to")
        return None
    strength = DEFAULT_STRENGTH if request.strength is None else request.strength
    check_strength(strength)
    return strength


def _check_earlier_variations(request: GenerationRequest) -> None:
    earlier = request.earlier_variations
    if not earlier:
        return
    if request.variation_seed is None:
        raise RequestError("earlier_variations", "earlier variations need a variation_seed")
    if len(earlier) > MAX_VARIATION_DEPTH:
        raise RequestError("earlier_variations", f"an image can be varied at most "
                           f"{MAX_VARIATION_DEPTH} times in a row")
    for variation in earlier:
        _check_seed("variation_seed", variation.seed, 1)
        _check_range("variation_strength", variation.strength, 0, 1)


def validate_request(request: GenerationRequest, settings: EngineSettings, *,
                     operations: Collection[str] | None = None,
                     any_model: bool = False,
                     info: ModelInfo | None = None) -> GenerationRequest:
    """A fully resolved copy of ``request``, or a RequestError for its first bad value.

    Cheap: reads only the model's small config files. ``operations`` lists the operation
    names known to the caller; without it only the name's shape is checked, because plugin
    operations are registered inside the worker.

    The model must be an allowed one (``allowed_model_info``: compared as a string before any
    file is read, and never echoed), because the bot validates what Discord members send.
    ``any_model`` is for ``imaginebot generate``: the person at the shell owns the machine, so
    any model they name is used and what is wrong with it is said in full.

    ``info``: what remote workers said of a model the bot has no files of (the remote engine's
    remembered catalogue); it is used as given, and its ``ref`` is the model's name.
    """
    if not request.prompt.strip():
        raise RequestError("prompt", "prompt must not be empty")
    operation = request.operation.strip()
    if not operation or (operations is not None and operation not in operations):
        raise RequestError("operation", f"unknown operation '{request.operation}'")
    # A validated request carries the resolved reference; it stays valid when checked again.
    ref = request.model or settings.model
    if info is None:
        info = model_info(ref, settings) if any_model else allowed_model_info(ref, settings)
    family = info.family

    steps = info.steps if request.steps is None else request.steps
    _check_range("steps", steps, 1, settings.max_steps)
    cfg = info.cfg if request.cfg is None else request.cfg
    _check_range("cfg", cfg, 0, MAX_CFG)
    sampler = info.sampler if request.sampler is None else request.sampler
    if sampler not in SAMPLERS:
        raise RequestError("sampler", f"unknown sampler '{sampler}'; choose one of "
                           f"{', '.join(family.samplers)}")
    if sampler not in family.samplers:
        raise RequestError("sampler", f"sampler {sampler} does not work with {family.name} "
                           f"models; choose one of {', '.join(family.samplers)}")
    _check_range("count", request.count, 1, settings.max_count)

    multiple = family.size_multiple
    width = _snap_size("width", info.width if request.width is None else request.width, multiple)
    height = _snap_size("height", info.height if request.height is None else request.height,
                        multiple)
    if width * height > settings.max_pixels:
        raise RequestError("size", f"size {width}x{height} is too large: at most "
                           f"{settings.max_pixels} pixels (width x height)")

    # Image i uses seed + i, or the same seed and variation seed + i in a variation grid.
    seeds_used = request.count if request.variation_seed is None else 1
    seed = random_seed(seeds_used) if request.seed is None else request.seed
    _check_seed("seed", seed, seeds_used)
    if request.variation_seed is not None:
        _check_seed("variation_seed", request.variation_seed, request.count)
    _check_range("variation_strength", request.variation_strength, 0, 1)
    _check_earlier_variations(request)
    strength = _image_prompt_strength(request)
    networks = resolve_networks(request.prompt, request.negative_prompt, info, settings)
    check_unchanged(request.networks, networks)

    return request.model_copy(update={
        "model": info.ref, "width": width, "height": height, "steps": steps, "cfg": cfg,
        "sampler": sampler, "seed": seed, "operation": operation, "strength": strength,
        "networks": networks,
    })
