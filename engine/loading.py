"""Device and dtype choice, model loading, and the LRU of warm pipelines."""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.errors import RequestError
from engine.families import ModelInfo
from engine.prompting.networks import NetworkState
from engine.speed import Speed, optimise

log = logging.getLogger(__name__)


def pick_device(setting: str) -> torch.device:
    """``auto`` prefers CUDA, then Apple's MPS, then the CPU."""
    if setting != "auto":
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """Half precision where the hardware runs it fast; float32 on the CPU."""
    if setting != "auto":
        dtype: torch.dtype = getattr(torch, setting)
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


@dataclass
class LoadedModel:
    """A warm pipeline, what it is, and the scheduler config it shipped with."""

    pipeline: Any
    info: ModelInfo
    #: Samplers are always built from the model's own scheduler config, never from a
    #: scheduler an earlier job swapped in.
    scheduler_config: Any
    #: What it was loaded in (engine.speed.model_dtype), which its initial noise is drawn in.
    dtype: torch.dtype
    #: The LoRAs and embeddings loaded into this pipeline (engine.prompting.networks).
    networks: NetworkState = field(default_factory=NetworkState)


def load_pipeline(info: ModelInfo, device: torch.device, dtype: torch.dtype,
                  speed: Speed | None = None) -> LoadedModel:
    """Load a hub id (local cache only), a diffusers folder, or one .safetensors file.

    With ``speed``, :func:`engine.speed.optimise` applies what it says for ``device`` (the
    tuned kernels only on CUDA); without, the pipeline is plain diffusers.
    """
    import diffusers

    try:
        if Path(info.ref).is_file():
            cls = getattr(diffusers, info.family.pipeline)
            extra: dict[str, Any] = {"config": info.config} if info.config else {}
            pipeline = cls.from_single_file(info.ref, dtype=dtype,
                                            local_files_only=True, **extra)
        else:
            pipeline = diffusers.DiffusionPipeline.from_pretrained(
                info.ref, dtype=dtype, local_files_only=True)
    except Exception as error:
        # The reason names files on this host: the log gets it, the member a sentence.
        log.warning("model %s (%s) could not be loaded: %s", info.name, info.ref, error)
        raise RequestError("model", f"model {info.name} could not be loaded; the engine's log "
                           "says why") from None
    pipeline.to(device)
    if speed is not None:
        optimise(pipeline, speed, device, dtype)
    pipeline.set_progress_bar_config(disable=True)
    log.info("loaded %s (%s) on %s as %s", info.name, info.family.name, device, dtype)
    return LoadedModel(pipeline, info, pipeline.scheduler.config, dtype)


class PipelineCache:
    """Least-recently-used pipelines, so switching between a few models stays fast."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, LoadedModel] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[str]:
        return list(self._items)

    def get(self, key: str, load: Callable[[], LoadedModel]) -> LoadedModel:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        while len(self._items) >= self.capacity:
            evicted = self._items.popitem(last=False)[0]
            log.info("unloading %s", evicted)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        loaded = load()
        self._items[key] = loaded
        return loaded
