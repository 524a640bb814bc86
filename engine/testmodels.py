"""Tiny random-weight models in diffusers format, built offline, for tests and benchmarks.

The configurations follow the ``get_dummy_components`` of diffusers' own pipeline tests,
with tokenizers written from a character-level vocabulary so nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.families import FAMILIES

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_WINDOW = 77
T5_WINDOW = 256
TEST_SIZE = 32


def clip_tokenizer() -> Any:
    """A character-level CLIP BPE tokenizer (no merges): every character is one token."""
    from transformers import CLIPTokenizer

    from engine.demo.tokenizer import byte_symbols

    symbols = byte_symbols()
    vocab = {token: i for i, token in
             enumerate([*symbols, *(s + "</w>" for s in symbols), CLIP_BOS, CLIP_EOS])}
    return CLIPTokenizer(vocab=vocab, merges=[], bos_token=CLIP_BOS, eos_token=CLIP_EOS,
                         unk_token=CLIP_EOS, pad_token=CLIP_EOS, model_max_length=CLIP_WINDOW)


def _t5_tokenizer() -> Any:
    """A unigram T5 tokenizer over single characters, with T5's special tokens first."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    pieces += [c for c in string.ascii_lowercase + string.ascii_uppercase + string.digits
               + string.punctuation]
    pieces += ["▁" + c for c in string.ascii_lowercase]
    vocab = [(p, 0.0 if i < 3 else -float(i)) for i, p in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_WINDOW)


def clip_text_model(vocab_size: int, eos: int, projection: bool, hidden: int = 32) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(bos_token_id=vocab_size - 2, eos_token_id=eos, hidden_size=hidden,
                            intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
                            num_hidden_layers=2, pad_token_id=eos, vocab_size=vocab_size,
                            projection_dim=hidden, max_position_embeddings=CLIP_WINDOW)
    torch.manual_seed(0)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _t5_text(vocab_size: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=32, d_ff=37, d_kv=8,
                                   num_heads=4, num_layers=2, relative_attention_num_buckets=8,
                                   pad_token_id=0, eos_token_id=1))


def _vae(flow: bool) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    extra: dict[str, Any] = ({"use_quant_conv": False, "use_post_quant_conv": False,
                              "shift_factor": 0.0609, "scaling_factor": 1.5035} if flow else {})
    return AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                         norm_num_groups=2, sample_size=TEST_SIZE, **extra)


def _eps_scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing="leading")


def _clip_parts(projection: bool) -> tuple[Any, Any]:
    tokenizer = clip_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(CLIP_EOS)
    return tokenizer, clip_text_model(len(tokenizer), eos, projection)


def _sd15() -> Any:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tokenizer, text_encoder = _clip_parts(projection=False)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1,
                                sample_size=TEST_SIZE // 2, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=32, norm_num_groups=2)
    return StableDiffusionPipeline(vae=_vae(False), text_encoder=text_encoder,
                                   tokenizer=tokenizer, unet=unet, scheduler=_eps_scheduler(),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _sdxl() -> Any:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer, text_encoder = _clip_parts(projection=False)
    tokenizer_2, text_encoder_2 = _clip_parts(projection=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1,
                                sample_size=TEST_SIZE // 2, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                attention_head_dim=(2, 4), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 1),
                                projection_class_embeddings_input_dim=6 * 8 + 32,
                                cross_attention_dim=64, norm_num_groups=2)
    return StableDiffusionXLPipeline(vae=_vae(False), text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=_eps_scheduler())


def _flux() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, text_encoder = _clip_parts(projection=False)
    tokenizer_2 = _t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1,
                                         num_single_layers=1, attention_head_dim=16,
                                         num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                         guidance_embeds=True)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(True),
                        text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=_t5_text(len(tokenizer_2)), tokenizer_2=tokenizer_2,
                        transformer=transformer)


def _sd3() -> Any:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    tokenizer, text_encoder = _clip_parts(projection=True)
    tokenizer_2, text_encoder_2 = _clip_parts(projection=True)
    tokenizer_3 = _t5_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=TEST_SIZE // 2, patch_size=1, in_channels=4,
                                        num_layers=1, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64,
                                        out_channels=4)
    return StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=_vae(True), text_encoder=text_encoder,
                                    tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                                    tokenizer_2=tokenizer_2,
                                    text_encoder_3=_t5_text(len(tokenizer_3)),
                                    tokenizer_3=tokenizer_3, transformer=transformer)


_BUILDERS: dict[str, Callable[[], Any]] = {
    "sd15": _sd15, "sdxl": _sdxl, "flux": _flux, "sd3": _sd3}
TEST_FAMILIES = tuple(_BUILDERS)


def make_test_model(family: str, out_dir: Path) -> Path:
    """Write a tiny seeded random model of ``family`` into ``out_dir`` and return the folder."""
    if family not in _BUILDERS:
        raise ValueError(f"family must be one of {', '.join(_BUILDERS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = _BUILDERS[family]()
    pipeline.save_pretrained(out_dir)
    spec = FAMILIES[family]
    sidecar = {"family": family, "name": f"tiny-{family}",
               "defaults": {"width": TEST_SIZE, "height": TEST_SIZE, "steps": 2,
                            "cfg": spec.cfg if spec.cfg > 1 else 0.0, "sampler": spec.sampler}}
    (out_dir / "imaginebot.json").write_text(json.dumps(sidecar, indent=2))
    return out_dir


_RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                  ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
                  ("conv_shortcut", "skip_connection"))
_VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                         "to_out.0": "proj_out"}


def _resnet_key(rest: str) -> str:
    for new, old in _RESNET_TO_LDM:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _unet_to_ldm(key: str, config: Any) -> str:
    """Inverse of diffusers' ``convert_ldm_unet_checkpoint`` key mapping, for any depth."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed: dict[str, str] = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]  # type: ignore[index]
    if key in fixed:
        return fixed[key]
    per = config.layers_per_block + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + b * per + j}.0.{_resnet_key(rest)}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet_key(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * per + int(m[2])}.0.{_resnet_key(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * per + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        b = int(m[1])
        slot = 2 if "CrossAttn" in config.up_block_types[b] else 1
        return f"output_blocks.{b * per + per - 1}.{slot}.conv.{m[2]}"
    raise ValueError(f"no original-layout name for UNet key {key}")


def _vae_to_ldm(key: str, config: Any) -> str:
    """Inverse of diffusers' ``convert_ldm_vae_checkpoint`` key mapping."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed: dict[str, str] = DIFFUSERS_TO_LDM_MAPPING["vae"]  # type: ignore[assignment]
    if key in fixed:
        return fixed[key]
    up = len(config.up_block_types)
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        rest = m[2]
        for new, old in _VAE_ATTENTION_TO_LDM.items():
            if rest.startswith(new + "."):
                rest = old + rest[len(new):]
        return f"{m[1]}.mid.attn_1.{rest}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        block = up - 1 - int(m[1])
        return f"decoder.up.{block}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{up - 1 - int(m[1])}.upsample.conv.{m[2]}"
    raise ValueError(f"no original-layout name for VAE key {key}")


def save_single_file(folder: Path, path: Path) -> Path:
    """Write an SD 1.x diffusers folder as one .safetensors file in the original layout.

    diffusers ships only the original -> diffusers converters (``from_single_file``), so
    this is their inverse for the SD 1.x layout (UNet under ``model.diffusion_model.``, VAE
    under ``first_stage_model.`` with 1x1-conv attention weights, CLIP under
    ``cond_stage_model.transformer.``), enough to test single-file loading offline.
    """
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    state: dict[str, torch.Tensor] = {}
    for key, value in pipe.unet.state_dict().items():
        state["model.diffusion_model." + _unet_to_ldm(key, pipe.unet.config)] = value
    for key, value in pipe.vae.state_dict().items():
        name = _vae_to_ldm(key, pipe.vae.config)
        is_attention = ".attn_1." in name and name.endswith("weight") and value.ndim == 2
        state["first_stage_model." + name] = value[:, :, None, None] if is_attention else value
    for key, value in pipe.text_encoder.state_dict().items():
        # Original checkpoints keep transformers' older "text_model." level.
        name = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
