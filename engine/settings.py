"""Engine settings: everything the diffusion side needs, and nothing about Discord.

Read from ``IMAGINEBOT_*`` environment variables and an optional ``imaginebot.toml``
in the working directory. The bot's settings extend these, so one file configures both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from engine.tiers import needed_tiers, rank, tier_refusal
from imaginebot_common.settings import FileSettings

#: The model name that resolves to the demo model shipped inside the engine package.
DEMO_MODEL = "demo"


def split_list(value: Any) -> Any:
    """Accept ``a,b,c`` as well as a JSON list, since admins type env vars by hand."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class EngineSettings(FileSettings):
    model: str = Field(DEMO_MODEL, description="Default model: a hub id (from the local cache), "
                       "a diffusers folder, a single .safetensors file, or `demo`.")
    models: CommaList = Field(default_factory=list,
                              description="Other models members may pick, by name (the folder, "
                              "file or hub repository name; never the path); the default is always "
                              "allowed. `imaginebot generate` runs any model.")
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto", description="Where the worker runs: auto picks cuda, then mps, then cpu.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 or float16 on GPUs, float32 on CPU.")
    output_dir: Path = Field(Path("outputs"), description="Images are saved here, one folder "
                             "per job.")
    pipeline_cache_size: int = Field(2, ge=1, le=16, description="Loaded pipelines kept warm.")
    max_pixels: int = Field(1536 * 1024, ge=64 * 64, description="Largest width×height allowed.")
    max_steps: int = Field(100, ge=1, le=500, description="Most sampler steps in one request.")
    max_count: int = Field(4, ge=1, le=16, description="Most images in one request.")
    max_batch: int = Field(8, ge=1, le=64, description="Most images run as one batch.")
    styles_file: Path | None = Field(
        None, description="An AUTOMATIC1111 `styles.csv` (name, prompt, negative_prompt; "
        "`{prompt}` marks where the prompt goes, else the style is appended): members pick a "
        "style with `/imagine style:` or `--style NAME`.")
    image_prompt_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest image prompt accepted (an `/imagine "
        "image:` attachment or `imaginebot generate --image` file), in bytes.")
    preview_every: int = Field(4, ge=0, description="Steps between previews; 0 turns them off.")
    lora_dir: Path | None = Field(None, description="Folder of LoRA `.safetensors` files "
                                  "(kohya/A1111 or diffusers format), used as `<lora:NAME:WEIGHT>` "
                                  "in a prompt; NAME is the file name without `.safetensors`.")
    embeddings_dir: Path | None = Field(None, description="Folder of textual-inversion "
                                        "embeddings (`.safetensors`); a prompt uses one by "
                                        "writing its file name without `.safetensors`.")
    tier: Literal["reference", "fast", "lossy"] = Field(
        "fast", description="The most the engine may trade for speed (docs/engine.md, Speed "
        "settings and contract tiers): `reference` is bitwise plain diffusers; `fast` (tuned "
        "kernels on GPUs: TF32, channels_last, fused QKV, the fastest attention, and "
        "IMAGINEBOT_COMPILE) is near-equal; `lossy` also allows IMAGINEBOT_QUANTIZE. Set, it is a "
        "ceiling: a setting above it is refused. Unset, it is `fast`, or `lossy` when "
        "IMAGINEBOT_QUANTIZE asks for it.")
    compile: Literal["off", "default", "max"] = Field(
        "off", description="torch.compile the denoiser and the VAE decoder (fast tier): "
        "`default`, or `max` (autotuned kernels, and CUDA graphs for a UNet). Shapes in "
        "IMAGINEBOT_WARM_ASPECTS are compiled when the worker starts.")
    attention: Literal["auto", "native", "cudnn", "flash", "flash3"] = Field(
        "auto", description="Attention kernels: `native` is PyTorch's SDPA as plain diffusers "
        "runs it; `auto` is cuDNN attention on NVIDIA GPUs at the fast tier, else native; "
        "`cudnn` and `flash` put that PyTorch kernel first (fast tier); `flash3` needs "
        "FlashAttention-3 installed.")
    quantize: Literal["off", "fp8"] = Field(
        "off", description="`fp8`: rowwise dynamic FP8 for the denoiser's linear layers, on "
        "Hopper (H100) and newer. Lossy tier: setting it is the opt-in, unless IMAGINEBOT_TIER "
        "is set lower.")
    warm_aspects: CommaList = Field(
        default_factory=lambda: ["1:1"], description="With IMAGINEBOT_COMPILE on, the aspects "
        "whose shapes (1, 2, 4 and 8 images, up to IMAGINEBOT_MAX_BATCH) are compiled at worker "
        "start, so no member waits for a compile.")
    compile_cache: Path | None = Field(
        None, description="Folder where compiled kernels are kept between restarts "
        "(TorchInductor's cache); default: `~/.cache/imaginebot/inductor`.")
    png_compression: int = Field(
        6, ge=0, le=9, description="zlib level of saved PNGs (lossless at every level): 0 is "
        "fastest and largest, 9 smallest and slowest.")
    job_stall_seconds: float = Field(
        300.0, gt=0, description="A worker that sends nothing (no step, preview or result) for "
        "this long while it holds jobs is killed and restarted; its jobs fail.")
    model_load_seconds: float = Field(
        900.0, gt=0, description="The same limit while the worker starts or loads a model, up "
        "to the model's first step (torch.compile included).")

    engine: str = Field(
        "local", description="Where jobs run: `local` (one worker process on this host) or a "
        "Redis URL, `redis://[user:password@]host:port/db` (`rediss://` for TLS), that "
        "`imaginebot worker` processes on GPU hosts take jobs from; see docs/scaleout.md.")
    lease_seconds: float = Field(
        30.0, gt=0, description="A remote worker that has not renewed its lease on a job for "
        "this long loses it, and the job runs again elsewhere.")
    heartbeat_seconds: float = Field(
        5.0, gt=0, description="How often remote workers renew their leases and registration; "
        "well under lease_seconds.")
    redis_prefix: str = Field(
        "imaginebot", pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Prefix of every Redis key, so that several bots can share one Redis.")
    result_store: str = Field(
        "redis", pattern=r"^(redis|file:///.+)$",
        description="Where remote workers leave result PNGs for the bot: `redis` (keys that "
        "expire after an hour) or `file:///shared/folder`, a folder the bot and every worker "
        "mount at the same path.")

    @field_validator("engine")
    @classmethod
    def _engine_url(cls, value: str) -> str:
        if value != "local" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be `local` or a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("models", "warm_aspects", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_list(value)

    @model_validator(mode="after")
    def _speed_within_tier(self) -> EngineSettings:
        """A speed setting above an IMAGINEBOT_TIER the admin set is refused when the settings
        are read, with the sentence the worker would fail to start with (engine.tiers).

        Left unset, the tier is ``fast`` or what the settings ask for: naming a lossy setting
        (IMAGINEBOT_QUANTIZE=fp8) is itself the opt-in to the lossy tier.
        """
        values = {"compile": self.compile, "attention": self.attention,
                  "quantize": self.quantize}
        if "tier" not in self.model_fields_set:
            self.tier = max([self.tier, *needed_tiers(values)], key=rank)
        refusal = tier_refusal(self.tier, values)
        if refusal is not None:
            raise ValueError(refusal)
        return self

    @property
    def allowed_models(self) -> list[str]:
        return [self.model, *(m for m in self.models if m != self.model)]
