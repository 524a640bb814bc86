"""LoRAs and embeddings on a warm pipeline: loaded once, switched per batch.

Adapters are peft adapters named after their file's hash, kept per pipeline in a small LRU;
each batch sets the ones its requests name, with their weights, or turns LoRA off for a batch
without any (peft's disabled layers run the base layer alone, so such a batch is exactly what it
was before any LoRA was loaded). Embeddings are loaded once and stay: a loaded token changes only
prompts that contain it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import RequestError
from engine.prompting.library import Network, listing, short_hash
from engine.request import GenerationRequest
from engine.settings import EngineSettings
from engine.speed import unfuse_qkv

log = logging.getLogger(__name__)

#: LoRAs kept loaded per pipeline; the least recently used beyond this are deleted.
ADAPTER_CACHE = 8


@dataclass
class NetworkState:
    """What one pipeline has loaded."""

    #: adapter name -> LoRA name, least recently used first
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)
    #: embedding token -> its file's hash
    embeddings: dict[str, str] = field(default_factory=dict)
    #: the adapters and weights set now; None while LoRA is off
    active: tuple[tuple[str, float], ...] | None = None


def _file(network: Network, folder: Path | None) -> Path:
    """The file a validated network names, unchanged since validation."""
    what = "LoRA" if network.kind == "lora" else "embedding"
    found = listing(folder).get(network.name.casefold())
    if found is None:
        raise RequestError("prompt", f"{what} {network.name} is no longer available")
    if short_hash(found.path) != network.hash:
        raise RequestError("prompt", f"{what} {network.name} has changed since this request "
                           "was checked; send it again")
    return found.path


def _load_adapter(pipeline: Any, state: NetworkState, network: Network,
                  settings: EngineSettings) -> str:
    name = f"lora_{network.hash}"
    if name in state.adapters:
        state.adapters.move_to_end(name)
        return name
    from safetensors.torch import load_file

    path = _file(network, settings.lora_dir)
    # LoRAs work with UNets only (engine.prompting.library); fused QKV (fast tier) would
    # bypass their layers
    if getattr(pipeline, "unet", None) is not None:
        unfuse_qkv(pipeline.unet)
    while len(state.adapters) >= ADAPTER_CACHE:
        evicted, _ = state.adapters.popitem(last=False)
        pipeline.delete_adapters(evicted)
    pipeline.load_lora_weights(load_file(str(path)), adapter_name=name)
    state.adapters[name] = network.name
    log.info("loaded LoRA %s (%s)", network.name, network.hash)
    return name


def _embedding_targets(pipeline: Any) -> list[tuple[str | None, Any, Any]]:
    """(key in an XL embedding file, tokenizer, text encoder) for each CLIP encoder."""
    if getattr(pipeline, "text_encoder_2", None) is not None:
        return [("clip_l", pipeline.tokenizer, pipeline.text_encoder),
                ("clip_g", pipeline.tokenizer_2, pipeline.text_encoder_2)]
    return [(None, pipeline.tokenizer, pipeline.text_encoder)]


def _load_embedding(pipeline: Any, state: NetworkState, network: Network,
                    settings: EngineSettings) -> None:
    token = network.name
    if state.embeddings.get(token) == network.hash:
        return
    from safetensors.torch import load_file

    tensors = load_file(str(_file(network, settings.embeddings_dir)))
    targets = _embedding_targets(pipeline)
    if token in state.embeddings:  # the file changed since it was loaded
        for _, tokenizer, encoder in targets:
            pipeline.unload_textual_inversion(token, tokenizer=tokenizer, text_encoder=encoder)
    for key, tokenizer, encoder in targets:
        embedding = tensors if key is None else tensors[key]
        pipeline.load_textual_inversion(embedding, token=token, tokenizer=tokenizer,
                                        text_encoder=encoder)
    state.embeddings[token] = network.hash
    log.info("loaded embedding %s (%s)", token, network.hash)


def apply_networks(pipeline: Any, state: NetworkState, batch: Sequence[GenerationRequest],
                   settings: EngineSettings) -> None:
    """Make ``pipeline`` run ``batch``: its LoRAs set (one set: engine.batching keys by it),
    or LoRA off, and every embedding its prompts use loaded."""
    loras = [network for network in batch[0].networks if network.kind == "lora"]
    if loras:
        names = [_load_adapter(pipeline, state, network, settings) for network in loras]
        wanted = tuple(zip(names, (network.weight for network in loras), strict=True))
        if state.active is None:
            pipeline.enable_lora()
        if wanted != state.active:
            pipeline.set_adapters(names, [network.weight for network in loras])
            state.active = wanted
    elif state.active is not None:
        pipeline.disable_lora()
        state.active = None
    for request in batch:
        for network in request.networks:
            if network.kind == "embedding":
                _load_embedding(pipeline, state, network, settings)
