"""Speed settings: what makes the engine fast, each behind a setting with a contract tier.

Three tiers (engine.tiers, docs/engine.md "Speed settings and contract tiers"):

- ``reference``: bitwise what plain diffusers makes at the same dtype and batch, on the same
  device. Nothing here touches the pipeline.
- ``fast`` (the default): near-equal. On CUDA it turns on the tuned kernels: TF32 matmuls,
  channels_last convolutions, fused Q/K/V projections, cuDNN attention (``attention=auto``)
  and, in bf16, the VAE without its fp32 upcast; and it allows ``compile``.
- ``lossy``: opt-in only; allows ``quantize=fp8``.

The tuned kernels pay only on CUDA, so they are applied only there: on a CPU the fast tier
changes nothing unless a setting asks for it (``compile``), and the reproducibility tests stay
exact. :func:`optimise` decides by the device it is given, not by where the pipeline is, so the
tests run each setting's real code on the CPU by passing ``torch.device("cuda")``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
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
           "Float8RowwiseLinear", "Speed", "Tier", "attention_choice", "configure_torch",
           "model_dtype", "optimise", "quantize_fp8", "warm_up"]

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
    if device.type == "cuda":
        torch.set_float32_matmul_precision("highest" if speed.tier == "reference" else "high")
    if speed.compile == "off":
        return
    folder = (compile_cache or DEFAULT_COMPILE_CACHE).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    torch._logging.set_logs(recompiles=True)  # type: ignore[attr-defined]  # not in its __all__
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


def optimise(pipeline: Any, speed: Speed, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Apply to ``pipeline`` what ``speed`` says for ``device``; the names of what was applied.

    Order matters: layouts and fused projections first, then FP8 weights, then compile (it
    traces what is there), and the attention kernels' preference outside the compiled code.
    """
    applied: list[str] = []
    unet = getattr(pipeline, "unet", None)
    denoiser = unet if unet is not None else pipeline.transformer
    vae = getattr(pipeline, "vae", None)
    if device.type == "cuda" and speed.tier != "reference":
        applied += _tuned_kernels(unet, denoiser, vae, dtype)
    if speed.quantize == "fp8":
        applied.append(f"fp8 ({quantize_fp8(denoiser)} linear layers)")
    choice = attention_choice(speed, device)
    if choice == "flash3" and _dispatches_attention(denoiser):
        denoiser.set_attention_backend("_flash_3")
        applied.append("attention flash3")
        choice = "native"
    elif choice == "flash3":
        log.info("%s calls PyTorch's SDPA directly: flash3 uses PyTorch's flash kernel",
                 type(denoiser).__name__)
        choice = "flash"
    if speed.compile != "off":
        applied += _compile(denoiser, vae, speed.compile)
    if choice != "native":
        _prefer_sdpa(denoiser, SDPA_ORDER[choice])
        applied.append(f"attention {choice}")
    if applied:
        log.info("speed (%s tier): %s", speed.tier, ", ".join(applied))
    return applied


def _tuned_kernels(unet: Any, denoiser: Any, vae: Any, dtype: torch.dtype) -> list[str]:
    """channels_last convolutions, one matmul for Q, K and V, and a bf16 VAE.

    bf16 has fp32's range, so the VAE needs no fp32 upcast there (SDXL's img2img encode
    upcasts whenever the config says so); fp16 keeps the upcast, since SDXL's VAE overflows
    in fp16.
    """
    applied = []
    for module in (unet, vae):
        if module is not None:
            module.to(memory_format=torch.channels_last)
    applied.append("channels_last")
    if hasattr(denoiser, "fuse_qkv_projections"):
        denoiser.fuse_qkv_projections()
        applied.append("fused qkv")
    if dtype == torch.bfloat16 and vae is not None and vae.config.get("force_upcast"):
        vae.register_to_config(force_upcast=False)
        applied.append("vae in bf16")
    return applied


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


def _compile(denoiser: Any, vae: Any, mode: str) -> list[str]:
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
        applied = [f"compile {mode} (repeated blocks)"]
    else:
        denoiser.forward = torch.compile(denoiser.forward,
                                         mode="max-autotune" if autotune else None, **options)
        applied = [f"compile {mode}"]
    if vae is not None:
        vae.decoder.compile(mode="max-autotune-no-cudagraphs" if autotune else None, **options)
        applied.append("compile vae decoder")
    return applied


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
