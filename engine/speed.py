"""Speed settings: what makes the engine fast, each behind a setting with a contract tier.

Three tiers (engine.tiers, docs/engine.md "Speed settings and contract tiers"):

- ``reference``: bitwise what plain diffusers makes at the same dtype and batch, on the same
  device. Nothing here touches the pipeline.
- ``fast`` (the default): near-equal. On CUDA it turns on the tuned kernels: TF32 matmuls,
  channels_last convolutions, fused Q/K/V projections, cuDNN attention (``attention=auto``)
  and, in bf16, the VAE without its fp32 upcast; and it allows ``compile``.
- ``lossy``: opt-in only; allows ``quantize=fp8``.

:func:`optimise` keeps a record of what it changed on the pipeline (:class:`Tuning`), so that
:func:`reference_kernels` can take exactly that off for one job and put it back: an image made
again (an upscale whose source file is gone) runs at the reference tier on the same weights.

The tuned kernels pay only on CUDA, so they are applied only there: on a CPU the fast tier
changes nothing unless a setting asks for it (``compile``), and the reproducibility tests stay
exact. :func:`optimise` decides by the device it is given, not by where the pipeline is, so the
tests run each setting's real code on the CPU by passing ``torch.device("cuda")``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from engine.errors import RequestError
from engine.families import FAMILIES, aspect_size, model_info
from engine.request import GenerationRequest, validate_request
from engine.tiers import SETTING_TIERS, TIERS, Tier, rank, tier_refusal

if TYPE_CHECKING:
    from engine.runner import Runner
    from engine.settings import EngineSettings

__all__ = ["FP8_CAPABILITY", "SDPA_ORDER", "SETTING_TIERS", "TIERS", "WARM_BATCHES",
           "Float8RowwiseLinear", "Speed", "Tier", "Tuning", "attention_choice",
           "configure_torch", "model_dtype", "optimise", "quantize_fp8", "reference_kernels",
           "tuning", "unfuse_qkv", "warm_up"]

log = logging.getLogger(__name__)

Compile = Literal["off", "default", "max"]
Attention = Literal["auto", "native", "cudnn", "flash", "flash3"]
Quantize = Literal["off", "fp8"]

#: Where TorchInductor keeps compiled kernels between restarts when IMAGINEBOT_COMPILE_CACHE
#: is not set (its own default is under /tmp, which a reboot empties).
DEFAULT_COMPILE_CACHE = Path("~/.cache/imaginebot/inductor")
#: Batch sizes (images per pipeline call) compiled at worker start, up to IMAGINEBOT_MAX_BATCH.
WARM_BATCHES = (1, 2, 4, 8)
#: Steps of each warm-up run: shapes, not steps, decide what is compiled.
WARM_STEPS = 2
#: Compiled shapes are static (one graph per bucket), so dynamo's default of 8 graphs per
#: function would fall back to eager after a few aspects and batch sizes.
RECOMPILE_LIMIT = 64
#: Rowwise FP8 matmuls (torch._scaled_mm) need Hopper (compute capability 9.0) or newer.
FP8_CAPABILITY = (9, 0)
#: PyTorch SDPA kernels in the order each attention setting prefers them. A kernel that cannot
#: take a shape (cuDNN with SD 1.x's 160-wide heads, say) passes it to the next one.
SDPA_ORDER: dict[str, tuple[str, ...]] = {
    "cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
    "flash": ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
}


@dataclass(frozen=True)
class Speed:
    """The speed settings of one worker (IMAGINEBOT_TIER, _COMPILE, _ATTENTION, _QUANTIZE)."""

    tier: Tier = "fast"
    compile: Compile = "off"
    attention: Attention = "auto"
    quantize: Quantize = "off"

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> Speed:
        return cls(settings.tier, settings.compile, settings.attention, settings.quantize)

    def _values(self) -> dict[str, str]:
        return {"compile": self.compile, "attention": self.attention, "quantize": self.quantize}

    @property
    def effective_tier(self) -> Tier:
        """The highest tier among what is switched on: the tuned kernels count as ``fast``
        whenever the tier allows them (on CUDA; a CPU runs exact anyway)."""
        tiers: list[Tier] = [SETTING_TIERS[name][value] for name, value in self._values().items()]
        if self.tier != "reference":
            tiers.append("fast")
        return max(tiers, key=rank)

    def check(self, device: torch.device) -> None:
        """Refuse, in one sentence, settings above the tier or that ``device`` cannot run."""
        refusal = tier_refusal(self.tier, self._values())
        if refusal is not None:
            raise RequestError("settings", refusal)
        where = _device_name(device)
        if self.attention in ("cudnn", "flash3") and device.type != "cuda":
            raise RequestError("settings", f"IMAGINEBOT_ATTENTION={self.attention} needs an "
                               f"NVIDIA GPU, and this worker runs on {where}: use auto")
        if self.attention == "flash3" and importlib.util.find_spec("flash_attn_interface") is None:
            raise RequestError("settings", "IMAGINEBOT_ATTENTION=flash3 needs FlashAttention-3 "
                               "(its flash_attn_interface module) installed: use auto")
        if self.quantize == "fp8" and (
                device.type != "cuda" or torch.cuda.get_device_capability(device) < FP8_CAPABILITY):
            raise RequestError("settings", "IMAGINEBOT_QUANTIZE=fp8 needs an NVIDIA Hopper GPU "
                               f"(H100) or newer, and this worker runs on {where}: use off")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"the {device.type}"


def configure_torch(device: torch.device, speed: Speed, compile_cache: Path | None = None) -> None:
    """Process-wide flags, set once when the worker starts.

    TF32 matmuls (fp32 work on tensor cores) only at ``fast`` and above on CUDA; ``reference``
    keeps PyTorch's own default, as plain diffusers runs. With compile on, TorchInductor keeps
    its kernels in ``compile_cache`` (default :data:`DEFAULT_COMPILE_CACHE`), so a restart
    compiles from cache, and every recompile is logged: one in a member's request means a
    shape the warm-up did not cover.
    """
    log.info("contract tier %s on %s (IMAGINEBOT_TIER=%s, compile %s, attention %s, "
             "quantize %s)", speed.effective_tier, device.type, speed.tier, speed.compile,
             speed.attention, speed.quantize)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("highest" if speed.tier == "reference" else "high")
    if speed.compile == "off":
        return
    folder = (compile_cache or DEFAULT_COMPILE_CACHE).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    torch._logging.set_logs(recompiles=True)  # type: ignore[attr-defined, unused-ignore]
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                               RECOMPILE_LIMIT)
    log.info("torch.compile %s; kernels cached in %s", speed.compile, folder)


def model_dtype(family_name: str, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a model loads in: ``dtype``, except that FLUX never runs in float16.

    FLUX's activations overflow float16 (black or noisy images), so it takes bfloat16, or
    float32 where the device has no native bfloat16.
    """
    if FAMILIES[family_name].pipeline != "FluxPipeline" or dtype != torch.float16:
        return dtype
    chosen = torch.bfloat16 if _runs_bf16(device) else torch.float32
    log.info("%s models overflow float16: loading in %s", family_name, chosen)
    return chosen


def _runs_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        torch.ones(1, dtype=torch.bfloat16, device=device).add_(1)
    except (RuntimeError, TypeError):
        return False
    return True


def attention_choice(speed: Speed, device: torch.device) -> str:
    """``native``, ``cudnn``, ``flash`` or ``flash3``: what ``attention=auto`` resolves to."""
    if speed.attention != "auto":
        return speed.attention
    return "cudnn" if device.type == "cuda" and speed.tier != "reference" else "native"


@dataclass
class Tuning:
    """What :func:`optimise` changed on one pipeline, kept on it (:func:`tuning`), so that
    :func:`reference_kernels` takes off exactly that rather than guessing from the modules."""

    #: The names of what was applied, in order (what :func:`optimise` returns and logs).
    applied: list[str] = field(default_factory=list)
    #: Modules whose convolution weights were made channels_last.
    channels_last: list[torch.nn.Module] = field(default_factory=list)
    #: The denoiser whose Q, K and V projections were fused.
    fused: torch.nn.Module | None = None
    #: The VAE whose fp32 upcast (``force_upcast``) was turned off.
    no_upcast: torch.nn.Module | None = None
    #: The denoiser and the diffusers attention backend set on it (``flash3``).
    attention_backend: tuple[torch.nn.Module, str] | None = None
    #: Modules compiled in place (``Module.compile``: the VAE decoder, FLUX's repeated blocks).
    compiled: list[torch.nn.Module] = field(default_factory=list)
    #: Modules whose ``forward`` was replaced on the instance (a compiled UNet, the preferred
    #: SDPA kernels).
    forwards: list[torch.nn.Module] = field(default_factory=list)


#: The pipeline attribute that holds its :class:`Tuning`.
TUNING_ATTRIBUTE = "_imaginebot_tuning"


def tuning(pipeline: Any) -> Tuning | None:
    """What :func:`optimise` applied to ``pipeline``; None for a pipeline it never saw."""
    found = getattr(pipeline, TUNING_ATTRIBUTE, None)
    return found if isinstance(found, Tuning) else None


def optimise(pipeline: Any, speed: Speed, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Apply to ``pipeline`` what ``speed`` says for ``device``; the names of what was applied.

    Order matters: layouts and fused projections first, then FP8 weights, then compile (it
    traces what is there), and the attention kernels' preference outside the compiled code.
    What was applied is recorded on the pipeline (:class:`Tuning`) for
    :func:`reference_kernels`.
    """
    record = Tuning()
    applied = record.applied
    unet = getattr(pipeline, "unet", None)
    denoiser = unet if unet is not None else pipeline.transformer
    vae = getattr(pipeline, "vae", None)
    if device.type == "cuda" and speed.tier != "reference":
        _tuned_kernels(record, unet, denoiser, vae, dtype)
    if speed.quantize == "fp8":
        applied.append(f"fp8 ({quantize_fp8(denoiser)} linear layers)")
    choice = attention_choice(speed, device)
    if choice == "flash3" and _dispatches_attention(denoiser):
        denoiser.set_attention_backend("_flash_3")
        record.attention_backend = (denoiser, "_flash_3")
        applied.append("attention flash3")
        choice = "native"
    elif choice == "flash3":
        log.info("%s calls PyTorch's SDPA directly: flash3 uses PyTorch's flash kernel",
                 type(denoiser).__name__)
        choice = "flash"
    if speed.compile != "off":
        _compile(record, denoiser, vae, speed.compile)
    if choice != "native":
        _prefer_sdpa(denoiser, SDPA_ORDER[choice])
        record.forwards.append(denoiser)
        applied.append(f"attention {choice}")
    setattr(pipeline, TUNING_ATTRIBUTE, record)
    if applied:
        log.info("speed (%s tier): %s", speed.tier, ", ".join(applied))
    return applied


def _tuned_kernels(record: Tuning, unet: Any, denoiser: Any, vae: Any,
                   dtype: torch.dtype) -> None:
    """channels_last convolutions, one matmul for Q, K and V, and a bf16 VAE.

    bf16 has fp32's range, so the VAE needs no fp32 upcast there (SDXL's img2img encode
    upcasts whenever the config says so); fp16 keeps the upcast, since SDXL's VAE overflows
    in fp16.
    """
    for module in (unet, vae):
        if module is not None:
            module.to(memory_format=torch.channels_last)
            record.channels_last.append(module)
    record.applied.append("channels_last")
    if hasattr(denoiser, "fuse_qkv_projections"):
        denoiser.fuse_qkv_projections()
        record.fused = denoiser
        record.applied.append("fused qkv")
    if dtype == torch.bfloat16 and vae is not None and vae.config.get("force_upcast"):
        vae.register_to_config(force_upcast=False)
        record.no_upcast = vae
        record.applied.append("vae in bf16")


def _dispatches_attention(model: torch.nn.Module) -> bool:
    """Whether the model's attention goes through diffusers' dispatcher (FLUX, SD3), whose
    backend ``set_attention_backend`` picks; the UNet's processors call SDPA directly."""
    return any(hasattr(getattr(module, "processor", None), "_attention_backend")
               for module in model.modules())


def _prefer_sdpa(model: torch.nn.Module, order: tuple[str, ...]) -> None:
    """Run the model's forward under ``sdpa_kernel(order, set_priority=True)``.

    Wrapped outside any compiled code, so dynamo never traces the context manager: the
    compiled graph takes the kernel chosen under it while tracing.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [getattr(SDPBackend, name) for name in order]
    forward = model.forward

    @functools.wraps(forward)
    def forward_preferring(*args: Any, **kwargs: Any) -> Any:
        with sdpa_kernel(backends, set_priority=True):
            return forward(*args, **kwargs)

    model.forward = forward_preferring


def _compile(record: Tuning, denoiser: Any, vae: Any, mode: str) -> None:
    """torch.compile the denoiser and the VAE decoder, with static shapes.

    A transformer with repeated blocks (FLUX) compiles one block of each kind and reuses it
    (regional compile: a fraction of the compile time, about the same speed); a UNet, whose
    blocks differ, compiles whole. ``max`` autotunes
    the kernels; it adds CUDA graphs only to a whole compiled denoiser, since separately
    compiled regions would each replay into the memory the next one overwrites.
    """
    from diffusers import UNet2DConditionModel

    autotune = mode == "max"
    options: dict[str, Any] = {"fullgraph": True, "dynamic": False}
    if not isinstance(denoiser, UNet2DConditionModel) and getattr(denoiser, "_repeated_blocks",
                                                                  None):
        denoiser.compile_repeated_blocks(
            mode="max-autotune-no-cudagraphs" if autotune else None, **options)
        record.applied.append(f"compile {mode} (repeated blocks)")
    else:
        denoiser.forward = torch.compile(denoiser.forward,
                                         mode="max-autotune" if autotune else None, **options)
        record.forwards.append(denoiser)
        record.applied.append(f"compile {mode}")
    if vae is not None:
        vae.decoder.compile(mode="max-autotune-no-cudagraphs" if autotune else None, **options)
        record.applied.append("compile vae decoder")
    record.compiled += [module for root in (denoiser, vae) if root is not None
                        for module in root.modules() if module._compiled_call_impl is not None]


@contextlib.contextmanager
def reference_kernels(pipeline: Any) -> Iterator[None]:
    """While open, ``pipeline`` runs plain diffusers' kernels: the reference tier.

    Takes off what :func:`optimise` recorded (:class:`Tuning`) and puts it back on closing,
    exceptions included, so one job (an image made again) is bitwise what plain diffusers
    makes at the same dtype and batch, on the weights already loaded: float32 matmuls at
    ``"highest"`` precision (no TF32), the denoiser's eager forward (no compiled code, no SDPA
    preference) and uncompiled regions, PyTorch's native attention, separate Q, K and V
    projections, the VAE's own fp32 upcast and contiguous weights. Projections that a LoRA
    loaded meanwhile needs unfused stay unfused (engine.prompting.networks). FP8 weights
    (``quantize=fp8``) cannot be undone: the original weights are gone, so on the lossy tier
    the image stays lossy. A pipeline that :func:`optimise` never saw gets only the matmul
    precision.
    """
    record = tuning(pipeline)
    with contextlib.ExitStack() as undo:  # closes in reverse: optimise's order again
        undo.enter_context(_matmul_precision("highest"))
        if record is not None:
            undo.enter_context(_contiguous(record.channels_last))
            if record.fused is not None:
                undo.enter_context(_unfused(record.fused))
            if record.no_upcast is not None:
                undo.enter_context(_upcast(record.no_upcast))
            if record.attention_backend is not None:
                undo.enter_context(_native_attention(*record.attention_backend))
            undo.enter_context(_eager_calls(record.compiled))
            for module in record.forwards:
                undo.enter_context(_class_forward(module))
        yield


@contextlib.contextmanager
def _matmul_precision(precision: str) -> Iterator[None]:
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@contextlib.contextmanager
def _contiguous(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    for module in modules:
        module.to(memory_format=torch.contiguous_format)
    try:
        yield
    finally:
        for module in modules:
            module.to(memory_format=torch.channels_last)


def _qkv_fused(denoiser: Any) -> bool:
    """Whether the denoiser runs fused projections now. A UNet's ``unfuse_qkv_projections``
    swaps its attention processors back and leaves the fused layers and flags, so its
    processors tell; FLUX's attention modules drop the fused layers and their flag."""
    if hasattr(denoiser, "original_attn_processors"):  # set by a UNet's fuse
        return any("Fused" in type(processor).__name__
                   for processor in denoiser.attn_processors.values())
    return any(getattr(module, "fused_projections", False) for module in denoiser.modules())


def unfuse_qkv(denoiser: Any) -> bool:
    """Separate Q, K and V projections if they are fused now; whether they were.

    LoRA layers wrap to_q, to_k and to_v, which a fused projection would bypass, so loading
    a LoRA unfuses for good (engine.prompting.networks), and a reference remake for a while.
    """
    if not _qkv_fused(denoiser):
        return False
    denoiser.unfuse_qkv_projections()
    if hasattr(denoiser, "original_attn_processors"):
        # A UNet's unfuse empties the dict it restores from and keeps it, so a second unfuse
        # (another LoRA) would fail: None is what it holds before any fuse.
        denoiser.original_attn_processors = None
    return True


@contextlib.contextmanager
def _unfused(denoiser: Any) -> Iterator[None]:
    """Separate Q, K and V projections while open, if they are fused now (a LoRA may have
    unfused them for good). Fused again on closing unless a LoRA was loaded meanwhile."""
    if not unfuse_qkv(denoiser):
        yield
        return
    try:
        yield
    finally:
        if not getattr(denoiser, "peft_config", None):
            denoiser.fuse_qkv_projections()


@contextlib.contextmanager
def _upcast(vae: Any) -> Iterator[None]:
    vae.register_to_config(force_upcast=True)
    try:
        yield
    finally:
        vae.register_to_config(force_upcast=False)


@contextlib.contextmanager
def _native_attention(denoiser: Any, backend: str) -> Iterator[None]:
    """diffusers' dispatcher with PyTorch's SDPA, as it runs unless told otherwise."""
    denoiser.set_attention_backend("native")
    try:
        yield
    finally:
        denoiser.set_attention_backend(backend)


@contextlib.contextmanager
def _eager_calls(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Uncompiled calls while open. ``Module.compile`` keeps the compiled call in
    ``_compiled_call_impl``, which ``Module.__call__`` takes whenever it is not None (torch 2.2
    to 2.14 at least); None is a module's uncompiled state."""
    compiled = [(module, module._compiled_call_impl) for module in modules]
    for module, _ in compiled:
        module._compiled_call_impl = None
    try:
        yield
    finally:
        for module, call in compiled:
            module._compiled_call_impl = call


@contextlib.contextmanager
def _class_forward(module: torch.nn.Module) -> Iterator[None]:
    """The class's own forward while open: :func:`optimise` replaced the instance's."""
    replaced = module.__dict__.pop("forward", None)
    try:
        yield
    finally:
        if replaced is not None:
            module.forward = replaced


FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


def _rowwise_fp8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` as FP8 with one float32 scale per row (amax / FP8_MAX)."""
    scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (rows.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Float8RowwiseLinear(torch.nn.Module):
    """A linear layer with FP8 weights and dynamic FP8 activations, one scale per row.

    The weight is quantized once per output row; each call quantizes its input per row
    (token) and multiplies on the FP8 tensor cores with ``torch._scaled_mm``, in bf16 out.
    This is torchao's Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()) in a
    page of our own: the GPU machine installs nothing beyond torch, and torchao's releases
    are tied to torch's.
    """

    weight: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = _rowwise_fp8(linear.weight.detach())
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, scale = _rowwise_fp8(x.reshape(-1, self.in_features))
        out = torch._scaled_mm(rows, self.weight.t(), scale_a=scale, scale_b=self.weight_scale,
                               out_dtype=torch.bfloat16).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def quantize_fp8(model: torch.nn.Module) -> int:
    """Swap ``model``'s linear layers for :class:`Float8RowwiseLinear`; how many were swapped.

    FP8 matmuls need both sides' dimensions in multiples of 16; other layers stay as they are.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (type(child) is torch.nn.Linear and child.in_features % 16 == 0
                    and child.out_features % 16 == 0):
                setattr(parent, name, Float8RowwiseLinear(child))
                swapped += 1
    return swapped


def warm_up(runner: Runner, settings: EngineSettings,
            alive: Callable[[str], None] = lambda model: None) -> list[tuple[int, int, int]]:
    """Compile the default model's shapes before the worker says it is ready.

    Runs txt2img for 1, 2, 4 and 8 images (up to IMAGINEBOT_MAX_BATCH) at each of
    IMAGINEBOT_WARM_ASPECTS' sizes, a few steps each, as requests that batch together the way
    members' do; the images are thrown away. ``alive(model name)`` is called at every step, so
    the worker can tell the client's stall watchdog it is still busy. Returns the
    ``(images, width, height)`` buckets run; none with compile off.
    """
    if settings.compile == "off":
        return []
    info = model_info(settings.model, settings)
    buckets = [(images, *aspect_size(info, aspect)) for aspect in settings.warm_aspects
               for images in WARM_BATCHES if images <= settings.max_batch]
    for images, width, height in buckets:
        counts = [settings.max_count] * (images // settings.max_count)
        counts += [images % settings.max_count] if images % settings.max_count else []
        requests = [validate_request(GenerationRequest(
            prompt="warm-up", width=width, height=height, steps=WARM_STEPS, count=count,
            seed=0), settings) for count in counts]
        log.info("warming up: %d image(s) at %dx%d", images, width, height)
        runner.txt2img(requests, lambda *_: alive(info.name), lambda: False)
    return buckets
