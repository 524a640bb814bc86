"""Runs validated requests on warm diffusers pipelines, one batch at a time.

The runner is synchronous and owns the GPU; the worker process calls it from one thread.
Initial latents follow engine.noise's reproducibility contract and go into the pipeline as
``latents=``, so the pipeline scales them by the scheduler's init sigma itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from engine.batching import batch_key
from engine.errors import JobCancelled
from engine.families import ModelInfo, model_info
from engine.flux_latents import pack_latents, unpack_latents
from engine.image_prompt import load_source
from engine.loading import LoadedModel, PipelineCache, load_pipeline, pick_device, pick_dtype
from engine.memory import check_fits
from engine.noise import initial_noise, vary_added_noise
from engine.previews import HostLatents, Preview
from engine.prompting.encoding import T5_LIMIT, PromptEncoder, prompt_texts
from engine.prompting.networks import apply_networks
from engine.request import GenerationRequest
from engine.samplers import make_scheduler
from engine.settings import EngineSettings
from engine.speed import Speed, configure_torch, model_dtype

ProgressFn = Callable[[int, int, Preview | None], None]
#: ``(step, total, previews)``: previews maps job_id -> a preview of that request's images only
#: (empty on steps without previews), so a batch never shows one user another user's images.
#: Previews are rendered by whoever shows them (:meth:`Preview.image`), off the GPU thread.
BatchProgressFn = Callable[[int, int, Mapping[str, Preview]], None]
CancelFn = Callable[[], bool]

@dataclass
class RunOutput:
    images: list[Image.Image]
    seeds: list[int]
    metadata: dict[str, Any] = field(default_factory=dict)


def _is_flux(loaded: LoadedModel) -> bool:
    return loaded.info.family.pipeline == "FluxPipeline"


def latent_shape(loaded: LoadedModel, width: int, height: int) -> tuple[int, int, int, int]:
    """The unpacked (1, C, h, w) shape the pipeline draws its noise in."""
    pipe = loaded.pipeline
    scale = pipe.vae_scale_factor
    if _is_flux(loaded):
        # FluxPipeline.prepare_latents: 2 * (size // (scale * 2)), channels = in_channels / 4
        channels = pipe.transformer.config.in_channels // 4
        return (1, channels, 2 * (height // (scale * 2)), 2 * (width // (scale * 2)))
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    return (1, denoiser.config.in_channels, height // scale, width // scale)


def prompt_warnings(pipeline: Any, text: str, label: str = "prompt") -> list[str]:
    """Say when a prompt is longer than T5 reads (512 tokens) instead of cutting silently.

    CLIP families read long prompts whole, in chunks (engine.prompting.encoding); in T5
    families the CLIP encoders give only a summary, and T5 reads the prompt.
    """
    for attr in ("tokenizer_2", "tokenizer_3"):
        tokenizer = getattr(pipeline, attr, None)
        if not text or tokenizer is None or "T5" not in type(tokenizer).__name__:
            continue
        ids = tokenizer(text, truncation=False).input_ids
        if len(ids) > T5_LIMIT:
            # the same slice diffusers logs as removed: everything after the window's last token
            cut = tokenizer.decode(ids[T5_LIMIT - 1:-1], skip_special_tokens=True).strip()
            return [f"{label} is {len(ids)} tokens long; the T5 text encoder reads only "
                    f"{T5_LIMIT}, so this was ignored: {cut!r}"]
    return []


def _x0_prediction(scheduler: Any, output: Any, model_output: torch.Tensor,
                   sample: torch.Tensor) -> torch.Tensor | None:
    """The predicted clean latents of the step just taken.

    Schedulers that report it (DDIM, DDPM, Euler, Euler a: ``pred_original_sample``; LCM:
    ``denoised``) are used as is. DPM-Solver++ keeps its converted model output, which is
    the x0 prediction, in ``model_outputs``. For flow matching the model predicts the
    velocity v = noise - x0, so x0 = x_t - sigma * v.
    """
    for name in ("pred_original_sample", "denoised"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    outputs = getattr(scheduler, "model_outputs", None)
    if outputs and outputs[-1] is not None:
        return outputs[-1]
    sigmas = getattr(scheduler, "sigmas", None)
    index = getattr(scheduler, "step_index", None)
    if sigmas is not None and index is not None:
        # No move to the sample's device: flow-matching schedulers keep their sigmas there, and
        # a 0-dim CPU tensor enters a GPU op as a scalar, where a copy would wait for the GPU.
        sigma = sigmas[index - 1].to(dtype=sample.dtype)
        return sample - sigma * model_output
    return None


def pil_images(images: torch.Tensor) -> list[Image.Image]:
    """A pipeline's ``output_type="pt"`` images, (N, 3, H, W) in [0, 1], as PIL images.

    Bitwise what ``output_type="pil"`` gives (diffusers' ``VaeImageProcessor.numpy_to_pil``:
    ``(x * 255).round().astype(uint8)`` in float32), computed on the pipeline's device, so that
    one copy of uint8 pixels, a quarter of float32's bytes, goes to the host.
    """
    pixels = (images.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return [Image.fromarray(array) for array in pixels.cpu().numpy()]


def _capture_x0(scheduler: Any, sink: dict[str, torch.Tensor | None]) -> None:
    """Wrap ``scheduler.step`` so each step leaves its x0 prediction in ``sink``."""
    original = scheduler.step

    # wraps() keeps the signature visible: pipelines inspect it to decide whether to pass
    # ``generator`` and ``eta``, and ancestral samplers need the generator.
    @functools.wraps(original)
    def step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any,
             return_dict: bool = True, **kwargs: Any) -> Any:
        output = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        sink["x0"] = _x0_prediction(scheduler, output, model_output, sample)
        return output if return_dict else output.to_tuple()

    scheduler.step = step


def _whole_batch(progress: ProgressFn) -> BatchProgressFn:
    """Adapt a ProgressFn: it sees the first request's preview (all of it for one request)."""
    def report(step: int, total: int, previews: Mapping[str, Preview]) -> None:
        progress(step, total, next(iter(previews.values()), None))
    return report


class Runner:
    def __init__(self, settings: EngineSettings,
                 on_load: Callable[[str], None] = lambda model: None) -> None:
        """``on_load(model name)`` runs before each model load; the worker tells the client,
        whose stall watchdog then allows a load its own, longer limit.

        Refuses speed settings above the tier or beyond the device (engine.speed) with a
        RequestError, so a worker with such settings fails to start and says why."""
        self.settings = settings
        self.device = pick_device(settings.device)
        #: The setting's dtype; a model may load in another (engine.speed.model_dtype).
        self.dtype = pick_dtype(settings.dtype, self.device)
        self.speed = Speed.from_settings(settings)
        self.speed.check(self.device)
        configure_torch(self.device, self.speed, settings.compile_cache)
        self._cache = PipelineCache(settings.pipeline_cache_size)
        self._on_load = on_load

    @property
    def loaded_models(self) -> list[str]:
        return self._cache.keys()

    def model(self, model_ref: str) -> LoadedModel:
        info = model_info(model_ref or self.settings.model, self.settings)
        return self._cache.get(info.ref, lambda: self._load(info))

    def _load(self, info: ModelInfo) -> LoadedModel:
        self._on_load(info.name)
        dtype = model_dtype(info.family.name, self.dtype, self.device)
        check_fits(info, self.device, dtype)
        return load_pipeline(info, self.device, dtype, self.speed)

    def pipeline(self, model_ref: str) -> Any:
        """The warm diffusers pipeline for a model, loading it on first use."""
        return self.model(model_ref).pipeline

    def _scheduler(self, loaded: LoadedModel, sampler: str | None) -> Any:
        family = loaded.info.family
        return make_scheduler(sampler or family.sampler, loaded.scheduler_config,
                              family.samplers)

    def _callback(self, loaded: LoadedModel, sink: dict[str, torch.Tensor | None],
                  size: tuple[int, int], total: int | None,
                  progress: BatchProgressFn, counts: Mapping[str, int],
                  cancelled: CancelFn) -> Callable[..., dict[str, Any]]:
        """Step callback; ``counts`` gives each job's image count, in batch order.

        It never waits for the GPU: a preview step only queues x0's copy to the host
        (:class:`HostLatents`), and the previews are rendered by whoever shows them.
        """
        every = self.settings.preview_every
        family = loaded.info.family.name

        def on_step_end(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled():
                raise JobCancelled
            step = i + 1
            previews: dict[str, Preview] = {}
            x0 = sink.get("x0")
            if every and step % every == 0 and x0 is not None:
                if _is_flux(loaded):
                    x0 = unpack_latents(pipe, x0, *size)
                host = HostLatents(x0)
                start = 0
                for job_id, count in counts.items():
                    previews[job_id] = Preview(host, start, start + count, family)
                    start += count
            progress(step, total or int(getattr(pipe, "num_timesteps", step)), previews)
            return {}

        return on_step_end

    def txt2img(self, requests: Sequence[GenerationRequest], progress: ProgressFn,
                cancelled: CancelFn, *,
                batch_progress: BatchProgressFn | None = None) -> list[RunOutput]:
        """Run validated requests as one pipeline call; one RunOutput per request. (Prompts
        that encode differently, plain text or a different number of 75-token chunks, run as
        one call per kind: see engine.prompting.encoding.)

        Requests in one call must share their :func:`engine.batching.batch_key`, the rule the
        queue and the worker batch by; others are refused with a ValueError. A request with an
        image prompt (``source_image``, which runs alone) is an img2img pass from that image.
        ``progress`` sees the first request's preview (operations run one request);
        ``batch_progress``, when given, is called instead with a preview per request.
        """
        if not requests:
            return []
        key = batch_key(requests[0])
        if len(requests) > 1 and (key is None or any(batch_key(r) != key for r in requests)):
            raise ValueError("requests in one batch must share model, size, steps, sampler, "
                             "cfg and whether they have a negative prompt")
        if cancelled():
            raise JobCancelled
        loaded = self.model(requests[0].model)
        if requests[0].source_image is not None:
            return [self._image_prompt(loaded, requests[0], progress, cancelled)]
        apply_networks(loaded.pipeline, loaded.networks, requests, self.settings)
        # Prompts encoded alike share a call: plain text, or the same number of 75-token chunks
        # (padding a prompt with more chunks would change its image). Usually one group.
        encoder = PromptEncoder(loaded.pipeline, loaded.info.family.name)
        groups: dict[Any, list[GenerationRequest]] = {}
        for request in requests:
            groups.setdefault(encoder.group_key(request), []).append(request)
        outputs: dict[str, RunOutput] = {}
        for group_key, group in groups.items():
            for request, output in zip(group, self._run_batch(
                    loaded, group, batch_progress or _whole_batch(progress), cancelled,
                    encoder.kwargs(group, group_key)), strict=True):
                outputs[request.job_id] = output
        return [outputs[request.job_id] for request in requests]

    def _run_batch(self, loaded: LoadedModel, batch: list[GenerationRequest],
                   progress: BatchProgressFn, cancelled: CancelFn,
                   prompt_kwargs: dict[str, Any]) -> list[RunOutput]:
        pipe, info = loaded.pipeline, loaded.info
        first = batch[0]
        width, height = first.width or info.width, first.height or info.height
        steps = first.steps or info.steps
        cfg = info.cfg if first.cfg is None else first.cfg
        pipe.scheduler = self._scheduler(loaded, first.sampler)
        sink: dict[str, torch.Tensor | None] = {}
        _capture_x0(pipe.scheduler, sink)

        shape = latent_shape(loaded, width, height)
        noises: list[torch.Tensor] = []
        generators: list[torch.Generator] = []
        for request in batch:
            seed = 0 if request.seed is None else request.seed
            drawn, seeded = initial_noise(
                seed, request.count, shape, loaded.dtype, request.variation_seed,
                request.variation_strength,
                [(earlier.seed, earlier.strength) for earlier in request.earlier_variations])
            noises += drawn
            generators += seeded
        latents = torch.cat(noises)
        if _is_flux(loaded):
            latents = pack_latents(pipe, latents)

        kwargs: dict[str, Any] = {
            **prompt_kwargs, "height": height, "width": width, "num_inference_steps": steps,
            "guidance_scale": cfg, "latents": latents, "generator": generators,
            "output_type": "pt",
            "callback_on_step_end": self._callback(
                loaded, sink, (width, height), steps, progress,
                {request.job_id: request.count for request in batch}, cancelled),
            "callback_on_step_end_tensor_inputs": ["latents"],
        }
        images = pil_images(pipe(**kwargs).images)
        passes = steps * (2 if getattr(pipe, "do_classifier_free_guidance", False) else 1)
        return self._outputs(loaded, batch, images, cfg, passes)

    def _warnings(self, loaded: LoadedModel, request: GenerationRequest) -> list[str]:
        prompt, negative = prompt_texts(request)
        warnings = prompt_warnings(loaded.pipeline, prompt)
        if _is_flux(loaded):
            if negative:
                warnings.append("FLUX models ignore the negative prompt")
        else:
            warnings += prompt_warnings(loaded.pipeline, negative, "negative prompt")
        return warnings

    def _outputs(self, loaded: LoadedModel, batch: list[GenerationRequest],
                 images: list[Image.Image], cfg: float, passes: int) -> list[RunOutput]:
        info = loaded.info
        outputs: list[RunOutput] = []
        start = 0
        for request in batch:
            seed = 0 if request.seed is None else request.seed
            varied = request.variation_seed is not None
            seeds = [seed] * request.count if varied else [seed + i for i in range(request.count)]
            metadata: dict[str, Any] = {
                "model": info.name, "family": info.family.name, "sampler": request.sampler,
                "steps": request.steps, "cfg": cfg, "seed": seed, "width": request.width,
                "height": request.height, "warnings": self._warnings(loaded, request),
                "network_passes": passes, "batch_images": len(images),
            }
            if varied:
                metadata["variation_seed"] = request.variation_seed
                metadata["variation_strength"] = request.variation_strength
                metadata["variation_seeds"] = [
                    (request.variation_seed or 0) + i for i in range(request.count)]
                if request.earlier_variations:
                    metadata["earlier_variations"] = [
                        earlier.model_dump() for earlier in request.earlier_variations]
            outputs.append(RunOutput(images[start:start + request.count], seeds, metadata))
            start += request.count
        return outputs

    def _image_prompt(self, loaded: LoadedModel, request: GenerationRequest,
                      progress: ProgressFn, cancelled: CancelFn) -> RunOutput:
        """A validated request with an image prompt: img2img from its stored source image."""
        assert request.source_image is not None and request.strength is not None
        source = load_source(self.settings.output_dir, request.source_image)
        images, passes = self._img2img(loaded, request, source, request.strength, progress,
                                       cancelled, vary=True)
        cfg = loaded.info.cfg if request.cfg is None else request.cfg
        return self._outputs(loaded, [request], images, cfg, passes)[0]

    def img2img(self, request: GenerationRequest, init_image: Image.Image, strength: float,
                progress: ProgressFn, cancelled: CancelFn) -> list[Image.Image]:
        """Image-to-image with the loaded components (the hires-fix upscaler's pass)."""
        return self._img2img(self.model(request.model), request, init_image, strength,
                             progress, cancelled)[0]

    def prompt_kwargs(self, loaded: LoadedModel, pipe: Any,
                      request: GenerationRequest) -> dict[str, Any]:
        """The prompt arguments of ``pipe`` (made from ``loaded``'s components) for one request,
        as txt2img passes them: its LoRAs set and embeddings loaded, weighted and long prompts
        encoded, LoRA tags taken out. The image passes and plugin operations share it."""
        apply_networks(loaded.pipeline, loaded.networks, [request], self.settings)
        encoder = PromptEncoder(pipe, loaded.info.family.name)
        return encoder.kwargs([request], encoder.group_key(request))

    def _img2img(self, loaded: LoadedModel, request: GenerationRequest, init_image: Image.Image,
                 strength: float, progress: ProgressFn, cancelled: CancelFn, *,
                 vary: bool = False) -> tuple[list[Image.Image], int]:
        """Image i is diffusers' img2img pipeline, made from the loaded components with
        ``from_pipe``, with ``generator=torch.Generator("cpu").manual_seed(S + i)``; also
        returns the network passes it ran.

        With ``vary`` (an image prompt's own pass, not the hires fix, whose request may carry
        the variation of the image it enlarges), a request's variation is applied as for
        txt2img: every image keeps the main seed S and the noise added to the encoded image
        is the variation's (engine.noise.vary_added_noise)."""
        from diffusers import AutoPipelineForImage2Image

        pipe = AutoPipelineForImage2Image.from_pipe(loaded.pipeline)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = self._scheduler(loaded, request.sampler)
        sink: dict[str, torch.Tensor | None] = {}
        _capture_x0(pipe.scheduler, sink)
        seed = 0 if request.seed is None else request.seed
        seeds = [seed + i for i in range(request.count)]
        if vary and request.variation_seed is not None:
            vary_added_noise(pipe.scheduler, request.variation_seed, request.variation_strength,
                             [(earlier.seed, earlier.strength)
                              for earlier in request.earlier_variations])
            seeds = [seed] * request.count
        width, height = init_image.size
        kwargs: dict[str, Any] = {
            **self.prompt_kwargs(loaded, pipe, request), "image": init_image,
            "strength": strength, "num_inference_steps": request.steps or loaded.info.steps,
            "guidance_scale": loaded.info.cfg if request.cfg is None else request.cfg,
            "generator": [torch.Generator("cpu").manual_seed(each) for each in seeds],
            "output_type": "pt",
            "callback_on_step_end": self._callback(
                loaded, sink, (width, height), None, _whole_batch(progress),
                {request.job_id: request.count}, cancelled),
            "callback_on_step_end_tensor_inputs": ["latents"],
        }
        if _is_flux(loaded):
            kwargs.update(height=height, width=width)
        images = pil_images(pipe(**kwargs).images)
        guided = getattr(pipe, "do_classifier_free_guidance", False)
        return images, int(getattr(pipe, "num_timesteps", 0)) * (2 if guided else 1)
