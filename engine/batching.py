"""Which requests can share one pipeline call: the one rule the queue, worker and runner follow.

The bot's queue pops jobs together, the worker takes requests together and the runner runs them
in one call, all by this key. Were the queue looser than the runner, jobs would be shown
"Starting…" while they still waited for another call. Light on purpose: the bot imports it.
"""

from __future__ import annotations

from collections.abc import Hashable

from engine.request import GenerationRequest


def batch_key(request: GenerationRequest) -> Hashable | None:
    """Requests with equal keys run as one batch; None means the request always runs alone.

    One pipeline call has one model, size, step count, sampler and guidance scale, and negative
    prompts for all images or for none: without one SDXL uses zero embeddings, which the empty
    string a shared list would need instead does not reproduce. Prompts, seeds, counts and
    variations may differ. An image prompt (img2img) runs alone. LoRAs are set on the pipeline
    for a whole call, so the LoRA set (names, weights and file hashes) is in the key;
    embeddings are not, since a loaded one changes only prompts that contain its token.
    """
    if request.operation != "txt2img" or request.source_image is not None:
        return None
    return (request.model, request.width, request.height, request.steps, request.sampler,
            request.cfg, bool(request.negative_prompt),
            tuple(network for network in request.networks if network.kind == "lora"))
