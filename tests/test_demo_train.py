"""The training script end to end at toy size: a loadable, reproducible SD 1.5 folder."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

from engine.demo.train import train

# Slow: each test trains a model, if a toy one.
pytestmark = pytest.mark.slow


def _train(folder, **options):
    settings = {"seed": 3, "images_count": 16, "vae_steps": 2, "unet_steps": 3, "batch": 4,
                "checkpoint_dir": None, "checkpoint_every": 1000}
    train(folder, **(settings | options))


def _weights(folder, part):
    return load_file(folder / f"{part}.safetensors")


def _assert_same_weights(first, second,
                         parts=("unet/diffusion_pytorch_model", "text_encoder/model")):
    for part in parts:
        one, other = _weights(first, part), _weights(second, part)
        assert one.keys() == other.keys(), part
        assert all(torch.equal(one[k], other[k]) for k in one), part


def test_training_writes_a_reproducible_sd15_folder(tmp_path):
    # Two data-parallel processes, as the default command trains.
    _train(tmp_path / "a", processes=2)
    _train(tmp_path / "b", processes=2)
    _assert_same_weights(tmp_path / "a", tmp_path / "b", (
        "unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model"))
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


def test_one_process_sees_the_same_samples_as_two(tmp_path):
    """The split changes only float rounding: every rank draws the whole batch."""
    _train(tmp_path / "two", processes=2)
    _train(tmp_path / "one", processes=1)
    _train(tmp_path / "init", unet_steps=0)
    two, one, init = (_weights(tmp_path / n, "unet/diffusion_pytorch_model")
                      for n in ("two", "one", "init"))
    learned = torch.cat([(two[k] - init[k]).flatten() for k in two])
    apart = torch.cat([(two[k] - one[k]).flatten() for k in two])
    assert learned.norm() > 0
    assert apart.norm() < 0.05 * learned.norm()


def test_reusing_a_runs_vae_gives_the_same_model(tmp_path):
    _train(tmp_path / "full")
    _train(tmp_path / "reused", vae_from=tmp_path / "full" / "vae")
    _assert_same_weights(tmp_path / "full", tmp_path / "reused")


def test_a_resumed_run_ends_where_an_unbroken_one_does(tmp_path, caplog):
    snapshots = tmp_path / "snapshots"
    _train(tmp_path / "unbroken", checkpoint_dir=snapshots, checkpoint_every=2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engine.demo.train"):
        _train(tmp_path / "resumed", vae_from=tmp_path / "unbroken" / "vae",
               resume=snapshots / "step-2")
    steps = [r.getMessage().split()[2] for r in caplog.records
             if r.getMessage().startswith("unet step")]
    assert steps == ["2/3"]  # it went on from the snapshot instead of starting over
    _assert_same_weights(tmp_path / "unbroken", tmp_path / "resumed")
