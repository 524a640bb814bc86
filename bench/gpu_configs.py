"""What `python -m bench.gpu_session` builds and measures, written out so nothing is downloaded.

FULL holds the published configurations of the SDXL 1.0 base UNet and VAE and the FLUX.1-dev
transformer and VAE (diffusers ``config.json`` files of stabilityai/stable-diffusion-xl-base-1.0
and black-forest-labs/FLUX.1-dev). SMOKE keeps the same block types at toy widths so every
stage can run on a CPU in seconds. Text encoders are left out on purpose: every configuration
gets the same precomputed random prompt embeddings of the real shapes. FULL_PLAN and SMOKE_PLAN
say at which sizes, batches and step counts, and how long each stage is expected to take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
    "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": False, "use_linear_projection": True,
}
SDXL_VAE: dict[str, Any] = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True,
}
SDXL_SCHEDULER: dict[str, Any] = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "steps_offset": 1, "timestep_spacing": "leading", "use_karras_sigmas": False,
}
#: Prompt embeddings of SDXL's two CLIP encoders: tokens x (768 + 1280), pooled 1280.
SDXL_EMBEDDINGS = {"tokens": 77, "width": 2048, "pooled": 1280}

FLUX_TRANSFORMER: dict[str, Any] = {
    "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": True,
    "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24,
    "num_layers": 19, "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768,
}
FLUX_VAE: dict[str, Any] = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 2,
    "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.3611,
    "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False,
    "force_upcast": True,
}
FLUX_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
}
#: T5-XXL tokens x 4096 and CLIP-L pooled 768.
FLUX_EMBEDDINGS = {"tokens": 512, "width": 4096, "pooled": 768}

FULL: dict[str, dict[str, Any]] = {
    "sdxl": {"denoiser": SDXL_UNET, "vae": SDXL_VAE, "scheduler": SDXL_SCHEDULER,
             "embeddings": SDXL_EMBEDDINGS},
    "flux": {"denoiser": FLUX_TRANSFORMER, "vae": FLUX_VAE, "scheduler": FLUX_SCHEDULER,
             "embeddings": FLUX_EMBEDDINGS},
}

_TOY_VAE = {"block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1,
            "norm_num_groups": 4, "sample_size": 64}
SMOKE: dict[str, dict[str, Any]] = {
    "sdxl": {
        "denoiser": {**SDXL_UNET, "block_out_channels": [32, 64], "attention_head_dim": [2, 4],
                     "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                     "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                     "transformer_layers_per_block": [1, 1], "layers_per_block": 1,
                     "norm_num_groups": 8, "cross_attention_dim": 64,
                     "addition_time_embed_dim": 8, "sample_size": 32,
                     "projection_class_embeddings_input_dim": 32 + 6 * 8},
        "vae": {**SDXL_VAE, **_TOY_VAE},
        "scheduler": SDXL_SCHEDULER,
        "embeddings": {"tokens": 77, "width": 64, "pooled": 32},
    },
    "flux": {
        "denoiser": {**FLUX_TRANSFORMER, "attention_head_dim": 16, "axes_dims_rope": [4, 6, 6],
                     "num_attention_heads": 2, "num_layers": 1, "num_single_layers": 1,
                     "joint_attention_dim": 32, "pooled_projection_dim": 32,
                     "in_channels": 64},
        "vae": {**FLUX_VAE, **_TOY_VAE},
        "scheduler": FLUX_SCHEDULER,
        "embeddings": {"tokens": 32, "width": 32, "pooled": 32},
    },
}


@dataclass(frozen=True)
class Plan:
    """One run's sizes and step counts, and each stage's expected seconds (the budget guard).

    Every configuration runs ``warmup_steps`` once, then each of ``fit_steps``; the two timings
    give time = fixed + steps x per_step, which separates the VAE decode and other per-call
    costs from the step loop and extrapolates to the family's own step count.
    """

    models: dict[str, dict[str, Any]]
    size: int
    #: The hires-fix upscale's output edge: S4 decodes one image of this size.
    upscale_size: int
    fit_steps: tuple[int, int]
    warmup_steps: int
    #: Images per /imagine grid, the unit the goals are stated in.
    grid: int
    big_batch: int
    gemm_size: int
    #: (batch, heads, tokens, head width) of the attention S0 times on each SDPA backend:
    #: FLUX at 1024² (4096 image + 512 text tokens).
    attention_shape: tuple[int, int, int, int]
    drift_images: int
    #: Sampler steps of S5's demo-model images; None: the demo model's own default.
    drift_steps: int | None
    #: Expected seconds per stage, compile included; a stage starts only with this much left.
    stage_seconds: dict[str, float]
    #: Expected seconds of one measured configuration at the grid batch, per model.
    config_seconds: dict[str, float] = field(default_factory=dict)
    #: torch.compile backend for S7 and S8; None is the engine's (Inductor). A smoke run traces
    #: with dynamo and AOTAutograd (what breaks a full graph) but skips Inductor's code
    #: generation, which alone would take a CPU minutes.
    compile_backend: str | None = None


#: Family defaults that anchors and goals are stated at (engine.families): steps and guidance.
FAMILY_STEPS = {"sdxl": 30, "flux": 28}
GUIDANCE = {"sdxl": 6.0, "flux": 3.5}

#: Published H100 numbers (the issue); the H200 has the same compute and 1.4x the bandwidth.
ANCHORS: dict[str, dict[str, float]] = {
    "sdxl": {"plain_s_per_image": 2.5, "plain_it_per_s": 14.9, "compiled_it_per_s": 18.5,
             "stable_fast_it_per_s": 21.6, "tensorrt_s_per_image": 1.47, "floor_s": 0.53},
    "flux": {"plain_s_per_image": 6.6, "plain_s_per_grid": 24.8, "compiled_s_per_image": 4.2,
             "compiled_s_per_grid": 15.9, "fp8_s_per_image": 3.0, "fp8_s_per_grid": 11.4,
             "floor_s": 2.66},
}
#: Speedups per 4-image grid the issue asks for, against plain fp16 (SDXL) or bf16 (FLUX).
GOALS = {"sdxl_fast": 1.5, "sdxl_lossy": 1.7, "flux_fast": 1.7}

FULL_PLAN = Plan(
    models=FULL, size=1024, upscale_size=2048, fit_steps=(4, 12), warmup_steps=2, grid=4,
    big_batch=8, gemm_size=8192, attention_shape=(1, 24, 4608, 128), drift_images=4,
    drift_steps=None,
    stage_seconds={"S0": 15, "S1": 45, "S2": 70, "S3": 60, "S4": 25, "S5": 20, "S6": 60,
                   "S7": 120, "S8": 110},
    config_seconds={"sdxl": 10, "flux": 25},
)
SMOKE_PLAN = Plan(
    models=SMOKE, size=64, upscale_size=128, fit_steps=(2, 4), warmup_steps=2, grid=4,
    big_batch=8, gemm_size=256, attention_shape=(1, 2, 96, 16), drift_images=2, drift_steps=4,
    stage_seconds=dict.fromkeys(("S0", "S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8"), 2.0),
    config_seconds={"sdxl": 0.5, "flux": 0.5}, compile_backend="aot_eager",
)
