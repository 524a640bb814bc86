"""The training script end to end at toy size: a loadable, reproducible SD 1.5 folder."""

from __future__ import annotations

import json

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

from engine.demo.train import train


def _train(folder, vae_from=None):
    train(folder, seed=3, images_count=16, vae_steps=2, unet_steps=3, batch=4,
          checkpoint_dir=None, checkpoint_every=1000, vae_from=vae_from)


def _weights(folder, part):
    return load_file(folder / f"{part}.safetensors")


def test_training_writes_a_reproducible_sd15_folder(tmp_path):
    _train(tmp_path / "a")
    _train(tmp_path / "b")
    for part in ("unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model",
                 "text_encoder/model"):
        first, second = _weights(tmp_path / "a", part), _weights(tmp_path / "b", part)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), part
    index = json.loads((tmp_path / "a" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert json.loads((tmp_path / "a" / "imaginebot.json").read_text())["family"] == "sd15"
    assert (tmp_path / "a" / "tokenizer" / "merges.txt").exists()

    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "a"))
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    assert not ddim.config.clip_sample and ddim.config.prediction_type == "v_prediction"
    assert pipe.vae.config.scaling_factor != 1.0
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_reusing_a_runs_vae_gives_the_same_model(tmp_path):
    _train(tmp_path / "full")
    _train(tmp_path / "reused", vae_from=tmp_path / "full" / "vae")
    for part in ("unet/diffusion_pytorch_model", "text_encoder/model"):
        full, reused = _weights(tmp_path / "full", part), _weights(tmp_path / "reused", part)
        assert all(torch.equal(full[k], reused[k]) for k in full), part
