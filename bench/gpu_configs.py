"""Architectures for bench/gpu_bench.py, written out so nothing is downloaded.

FULL holds the published configurations of the SDXL 1.0 base UNet and VAE and the FLUX.1-dev
transformer and VAE (diffusers ``config.json`` files of stabilityai/stable-diffusion-xl-base-1.0
and black-forest-labs/FLUX.1-dev). SMOKE keeps the same block types at toy widths so the whole
script can run on a CPU in seconds. Text encoders are left out on purpose: both sides of the
benchmark get the same precomputed random prompt embeddings of the real shapes.
"""

from __future__ import annotations

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
