"""Train the demo text-to-image model from scratch on synthetic shapes, on a CPU.

    nice -n 10 .venv/bin/python -m engine.demo.train --out engine/demo/model

Deterministic: one seed drives the dataset, the weight init, the noise and the batches,
and torch runs on a fixed number of threads and processes (float reductions depend on the
split). Two stages: an AutoencoderKL (64x64x3 <-> 16x16x4), then the UNet and the CLIP text
encoder jointly on the frozen VAE's latents, data-parallel over two processes, with a
v-prediction DDPM loss and 10% empty captions so classifier-free guidance works. The
result is a plain diffusers Stable Diffusion 1.5 folder (v-prediction is scheduler config,
as in SD 2.x-style checkpoints).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Concrete module paths: diffusers' lazy top-level names are opaque to mypy.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
    EulerAncestralDiscreteScheduler,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from engine.demo import dataset
from engine.demo.checker import read_image
from engine.demo.tokenizer import write_tokenizer

log = logging.getLogger("engine.demo.train")

IMAGE_SIZE = 64
MAX_TOKENS = 20
VAE_CROP = 32
VAE_BATCH = 32
LAYOUT_FROM = 800
LAYOUT_SHARE = 0.4
#: Optimizer, raw weights and generator next to each snapshot, so a run can go on.
STATE_FILE = "training-state.pt"
#: Cap of the weights' moving average (about the last 500 steps).
EMA_DECAY = 0.998
#: SD 1.5's noise schedule rescaled to zero terminal SNR, with v-prediction and trailing
#: timesteps (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
#: Flawed"; every SD 1.5 sampler in diffusers takes these options). With SD 1.5's own
#: schedule the last step still holds 7% of the image: on a 16x16 latent that is enough to
#: see a blob, so a model trained on it placed each shape where the seed's noise suggested
#: and ignored "top left".
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
            "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False}
#: Defaults the engine reads from imaginebot.json (chosen by engine/demo/evaluate.py runs).
DEFAULTS = {"width": IMAGE_SIZE, "height": IMAGE_SIZE, "steps": 20, "cfg": 3.0,
            "sampler": "euler_a"}


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
        mid_block_add_attention=False)


def build_unet() -> UNet2DConditionModel:
    # No attention at the full 16x16 latent resolution: it would triple the CPU cost.
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=128, attention_head_dim=4, norm_num_groups=16,
        # The prompt, pooled, also joins the timestep embedding (as in DeepFloyd IF), so the
        # 16x16 level, which has no cross-attention, knows which shape it is drawing.
        addition_embed_type="text", addition_embed_type_num_heads=4)


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=128)
    return CLIPTextModel(config)


def make_data(count: int, seed: int) -> tuple[torch.Tensor, list[dataset.Scene]]:
    """Images as uint8 NCHW plus what each one shows."""
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    scenes: list[dataset.Scene] = []
    for i, (image, scene) in enumerate(dataset.generate(count, seed, IMAGE_SIZE,
                                                        mislabel=True)):
        images[i] = np.asarray(image)
        scenes.append(scene)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), scenes


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def train_vae(vae: AutoencoderKL, images: torch.Tensor, steps: int, batch: int,
              gen: torch.Generator) -> None:
    """Reconstruction (L1 + MSE) with a tiny KL term: flat shapes need sharp edges.

    Without mid-block attention the VAE is fully convolutional, so random 32x32 crops
    teach it the same thing as whole images at a quarter of the CPU time. Shape pixels
    weigh 5x: a small star is 3% of the image, and a plain loss lets it blur into a blob.
    """
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps,
                                                pct_start=0.05)
    vae.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        top, left = torch.randint(0, IMAGE_SIZE - VAE_CROP + 1, (2,), generator=gen).tolist()
        crop = images[idx, :, top:top + VAE_CROP, left:left + VAE_CROP]
        x = to_unit(crop)
        # The corner pixel is always background (no shape reaches it).
        away = (crop.int() - images[idx, :, :1, :1].int()).abs().amax(dim=1, keepdim=True)
        weight = 1.0 + 4.0 * (away > 24).float()
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / z[0].numel()
        error = recon - x
        loss = (weight * (error.abs() + error ** 2)).mean() + 1e-5 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("vae step %d/%d loss %.4f", step, steps, loss.item())
    vae.eval()


@torch.no_grad()
def round_trip_accuracy(vae: AutoencoderKL, latents: torch.Tensor,
                        scenes: list[dataset.Scene]) -> dict[str, float]:
    """How often the checker still reads each attribute in the decoded (unscaled) latents.

    The UNet can never beat its VAE, so this is the ceiling of the model's accuracy.
    """
    recon = vae.decode(latents).sample
    pixels = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    hits = {"color": 0, "background": 0, "shape": 0, "position": 0}
    for array, scene in zip(pixels, scenes, strict=True):
        seen = read_image(Image.fromarray(array))
        for name in hits:
            hits[name] += getattr(seen, name) == getattr(scene, name)
    return {name: value / len(scenes) for name, value in hits.items()}


@torch.no_grad()
def encode_all(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(to_unit(images[i:i + 256])).latent_dist.mean
                      for i in range(0, len(images), 256)])


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return torch.as_tensor(ids)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


def save_pipeline(out: Path, vae: AutoencoderKL, unet: UNet2DConditionModel,
                  text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer) -> None:
    # The folder's own scheduler is the default sampler, so plain diffusers matches the engine.
    scheduler = EulerAncestralDiscreteScheduler(
        **{k: v for k, v in SCHEDULE.items() if k not in ("clip_sample", "set_alpha_to_one")})
    # Not Euler's own options, but kept in its config (as in SD 1.5's) for the samplers built
    # from it: DDIM and DDPM would otherwise clip x0 to [-1, 1] and wash the colours out.
    scheduler.register_to_config(clip_sample=False, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler,
                                   safety_checker=None,  # type: ignore[arg-type]
                                   feature_extractor=None,  # type: ignore[arg-type]
                                   requires_safety_checker=False)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    # transformers saves only tokenizer.json; add the classic CLIP BPE files next to it.
    write_tokenizer(out / "tokenizer", dataset.vocabulary(), MAX_TOKENS)
    (out / "imaginebot.json").write_text(
        json.dumps({"family": "sd15", "defaults": DEFAULTS}, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class UnetJob:
    """Everything one rank of the UNet stage needs (pickled to each spawned process)."""

    latents: torch.Tensor
    ids: torch.Tensor
    empty: torch.Tensor
    tokenizer: CLIPTokenizer
    vae: AutoencoderKL
    seed: int
    steps: int
    batch: int
    threads: int
    out: Path
    checkpoint_dir: Path | None
    checkpoint_every: int
    resume: Path | None
    rendezvous: str
    start: float


def train_unet(rank: int, world: int, job: UnetJob) -> None:
    """One data-parallel rank of the UNet + text encoder stage; rank 0 keeps the EMA and saves.

    Two single-threaded processes do about 1.4x the work of one two-threaded process on
    this model (its ops are too small to split well across threads). Every rank draws the
    whole batch from the same generator and trains on its slice, so the samples seen do not
    depend on the number of processes; one all-reduce per step averages the gradients.
    """
    if world > 1:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        torch.set_num_threads(job.threads)
        dist.init_process_group("gloo", init_method=job.rendezvous, rank=rank, world_size=world)
    torch.manual_seed(job.seed + 1)
    gen = torch.Generator().manual_seed(job.seed + 1)
    batch, part = job.batch, slice(rank * job.batch // world, (rank + 1) * job.batch // world)
    unet = build_unet()
    text_encoder = build_text_encoder(job.tokenizer)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    # Constant rate after warmup (EMA does the averaging): a checkpoint after N steps is
    # then exactly what a run with --unet-steps N produces.
    warmup = 200
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULE.items() if k != "set_alpha_to_one"})
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    # The v loss weighs the image error by snr + 1; capping that at 5 (Min-SNR style) keeps
    # the nearly clean steps from drowning out the noisy ones, where layout is decided.
    weights = torch.clamp(5.0 / (snr + 1), max=1.0)
    # What a snapshot's STATE_FILE holds besides the generator and the step count.
    stateful: dict[str, torch.nn.Module | torch.optim.Optimizer
                   | torch.optim.lr_scheduler.LRScheduler] = {
        "unet": unet, "text_encoder": text_encoder, "ema_unet": ema_unet,
        "ema_text": ema_text, "optimizer": opt, "lr": lr_sched}
    first = 0
    if job.resume is not None:
        state = torch.load(job.resume / STATE_FILE, weights_only=True)
        for name, holder in stateful.items():
            holder.load_state_dict(state[name])
        gen.set_state(state["generator"])
        first = state["step"]
    unet.train()
    text_encoder.train()
    for step in range(first, job.steps):
        idx = torch.randint(0, len(job.latents), (batch,), generator=gen)
        tokens = job.ids[idx].clone()
        drop = torch.rand(batch, generator=gen) < 0.1
        tokens[drop] = job.empty
        noise = torch.randn((batch, *job.latents.shape[1:]), generator=gen)
        # Where the shape goes is settled in the noisiest steps (t >= LAYOUT_FROM): a uniform
        # draw gives them 20% of the batch; LAYOUT_SHARE more makes "top left" learnable.
        uniform = torch.randint(0, 1000, (batch,), generator=gen)
        layout = torch.randint(LAYOUT_FROM, 1000, (batch,), generator=gen)
        t = torch.where(torch.rand(batch, generator=gen) < LAYOUT_SHARE, layout, uniform)[part]
        x0, noise = job.latents[idx[part]], noise[part]
        noisy = noise_sched.add_noise(x0, noise, t)
        cond = text_encoder(tokens[part])[0]
        pred = unet(noisy, t, cond).sample
        target = noise_sched.get_velocity(x0, noise, t)
        loss = ((pred - target) ** 2).mean(dim=(1, 2, 3)).mul(weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            grads = [p.grad for p in params if p.grad is not None]
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            flat /= world
            torch._foreach_copy_(grads, torch._utils._unflatten_dense_tensors(flat, grads))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        if rank != 0:
            continue
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text_encoder, decay)
        if step % 100 == 0 or step == job.steps - 1:
            log.info("unet step %d/%d loss %.4f (%.0fs)", step, job.steps, loss.item(),
                     time.monotonic() - job.start)
        done = step + 1
        if job.checkpoint_dir is not None and done % job.checkpoint_every == 0 \
                and done < job.steps:
            folder = job.checkpoint_dir / f"step-{done}"
            save_pipeline(folder, job.vae, ema_unet, ema_text, job.tokenizer)
            torch.save({name: holder.state_dict() for name, holder in stateful.items()}
                       | {"generator": gen.get_state(), "step": done}, folder / STATE_FILE)
    if rank == 0:
        save_pipeline(job.out, job.vae, ema_unet, ema_text, job.tokenizer)
    if world > 1:
        dist.destroy_process_group()


def train(out: Path, seed: int, images_count: int, vae_steps: int, unet_steps: int,
          batch: int, checkpoint_dir: Path | None, checkpoint_every: int,
          vae_from: Path | None = None, processes: int = 1, resume: Path | None = None) -> None:
    """``vae_from``: a VAE folder saved by an earlier run with the same seed and data; the
    UNet stage is seeded on its own, so the result is the same as training that VAE again.
    ``processes`` > 1 trains the UNet data-parallel, splitting torch's threads between them.
    ``resume``: a checkpoint folder of a run with the same arguments; the run goes on from
    there exactly as if it had never stopped (an hour on a CPU is easily interrupted)."""
    if batch % processes:
        raise ValueError(f"batch {batch} does not split into {processes} processes")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    work = Path(out).with_name(out.name + ".tokenizer-tmp")
    write_tokenizer(work, dataset.vocabulary(), MAX_TOKENS)
    tokenizer = CLIPTokenizer.from_pretrained(str(work))
    shutil.rmtree(work)

    images, scenes = make_data(images_count, seed)
    captions = [scene.caption for scene in scenes]
    log.info("dataset: %d images in %.0fs", len(images), time.monotonic() - start)

    if vae_from is None:
        vae = build_vae()
        train_vae(vae, images, vae_steps, VAE_BATCH, gen)
    else:
        vae = AutoencoderKL.from_pretrained(str(vae_from))
        vae.eval()
    latents = encode_all(vae, images)
    check = min(256, len(images))
    log.info("vae round trip, checker accuracy on %d images: %s", check,
             round_trip_accuracy(vae, latents[:check], scenes[:check]))
    scale = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scale)
    log.info("vae done at %.0fs, scaling_factor %.4f", time.monotonic() - start, scale)

    with tempfile.TemporaryDirectory() as rendezvous:
        job = UnetJob(
            latents=latents * scale, ids=tokenize(tokenizer, captions),
            empty=tokenize(tokenizer, [""])[0], tokenizer=tokenizer, vae=vae, seed=seed,
            steps=unet_steps, batch=batch,
            threads=max(1, torch.get_num_threads() // processes), out=out,
            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
            rendezvous=f"file://{rendezvous}/gloo", start=start)
        if processes == 1:
            train_unet(0, 1, job)
        else:
            mp.spawn(train_unet, args=(processes, job), nprocs=processes)
    log.info("saved %s after %.0fs", out, time.monotonic() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=16000)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=64, help="UNet batch (the VAE uses 32)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads in all; results are reproducible for a fixed value")
    parser.add_argument("--processes", type=int, default=2,
                        help="data-parallel UNet processes sharing the threads (fixed value "
                             "for reproducible results)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--resume", type=Path, default=None,
                        help="a --checkpoint-dir snapshot to go on from (same arguments)")
    parser.add_argument("--vae-from", type=Path, default=None,
                        help="reuse the vae/ folder of an earlier run (same seed and data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    train(args.out, args.seed, args.images, args.vae_steps, args.unet_steps, args.batch,
          args.checkpoint_dir, args.checkpoint_every, args.vae_from, args.processes,
          args.resume)


if __name__ == "__main__":
    main()
