"""The GPU session's stages, S0 to S8: the device, eager SDXL and FLUX, the engine's overhead,
memory, drift per tier, FP8, and the compiled models last (their compile time is the least
predictable, so a run cut short loses the least).

"plain" is what a diffusers user gets: the pipeline as built, in fp16 (SDXL) or bf16 (FLUX),
with PyTorch's default math flags. "engine" is the same random weights run the way the engine
runs them: its dtype choice (engine.loading.pick_dtype, engine.speed.model_dtype), its global
flags (engine.speed.configure_torch) and its pipeline settings (engine.speed.optimise) at the
default fast tier; S6 adds ``quantize=fp8`` (lossy), S7 and S8 ``compile=default``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import platform
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import gpu_measure as m
from bench.gpu_configs import ANCHORS, FAMILY_STEPS, GOALS, GUIDANCE, Plan
from bench.gpu_run import ERROR, OOM, Session, Skip, Stage, free_memory, outcome
from engine.errors import RequestError
from engine.loading import pick_dtype
from engine.speed import Speed, configure_torch, model_dtype, optimise

#: Each model's plain baseline, as the anchors state it.
PLAIN = {"sdxl": "plain-fp16", "flux": "plain-bf16"}
PLAIN_DTYPES = {"plain-fp16": torch.float16, "plain-bf16": torch.bfloat16}
PROMPT = "a lighthouse on a cliff at dawn, oil painting"
FAST, FP8, COMPILED = Speed(), Speed(tier="lossy", quantize="fp8"), Speed(compile="default")


@dataclass
class Context:
    """What stages share: the plan, the device, the budget, and what earlier stages measured.

    Everything is made on first use, so any stage can run alone (``--stages``).
    """

    plan: Plan
    device: torch.device
    session: Session
    work: Path
    pipes: dict[tuple[str, str], tuple[Any, torch.dtype, list[str]]] = field(default_factory=dict)
    #: (model, variant, batch) -> seconds per grid, for the ratios and the goals.
    grids: dict[tuple[str, str, int], float] = field(default_factory=dict)
    _ceilings: dict[torch.dtype, float] = field(default_factory=dict)
    _flops: dict[str, dict[str, float]] = field(default_factory=dict)

    def spec(self, model: str) -> dict[str, Any]:
        return self.plan.models[model]

    def ceiling(self, dtype: torch.dtype) -> float:
        """Measured TFLOP/s of a large square matmul in ``dtype``."""
        if dtype not in self._ceilings:
            self._ceilings[dtype] = m.gemm_tflops(self.device, dtype, self.plan.gemm_size)
        return self._ceilings[dtype]

    def flops(self, model: str) -> dict[str, float]:
        if model not in self._flops:
            self._flops[model] = m.count_flops(model, self.spec(model), self.plan.size)
        return self._flops[model]

    def plain_dtype(self, variant: str) -> torch.dtype:
        """fp16 or bf16; a CPU has no fast fp16 kernels, so a smoke run there uses bf16."""
        dtype = PLAIN_DTYPES[variant]
        return torch.bfloat16 if self.device.type == "cpu" else dtype

    def plain(self, model: str, variant: str) -> tuple[Any, torch.dtype, list[str]]:
        """The pipeline as diffusers builds it, under PyTorch's default math flags."""
        if self.device.type == "cuda":
            # PyTorch's default; the engine's fast tier sets "high" (TF32) through the same
            # call, so the flag is restored with the API that changed it.
            torch.set_float32_matmul_precision("highest")
        if (model, variant) not in self.pipes:
            dtype = self.plain_dtype(variant)
            self.pipes[model, variant] = (m.build(model, self.spec(model), self.device, dtype),
                                          dtype, [])
        return self.pipes[model, variant]

    def engine(self, model: str, speed: Speed = FAST,
               keep: bool = True) -> tuple[Any, torch.dtype, list[str]]:
        """The same weights the way the engine runs them at ``speed``."""
        speed.check(self.device)
        configure_torch(self.device, speed, self.work / "inductor")
        key = (model, f"engine-{speed.tier}-{speed.compile}-{speed.quantize}")
        if key in self.pipes:
            return self.pipes[key]
        dtype = model_dtype(model, pick_dtype("auto", self.device), self.device)
        pipe = m.build(model, self.spec(model), self.device, dtype)
        with compile_backend(self.plan.compile_backend):
            built = (pipe, dtype, optimise(pipe, speed, self.device, dtype))
        if keep:
            self.pipes[key] = built
        return built

    def drop(self) -> None:
        """Free every kept pipeline before a stage that builds its own."""
        self.pipes.clear()
        free_memory()


@contextlib.contextmanager
def compile_backend(backend: str | None) -> Iterator[None]:
    """torch.compile with ``backend`` while the engine sets compiling up (the plan's choice)."""
    if backend is None:
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        torch.compile = original


def attempt(ctx: Context, into: dict[str, Any], key: str,
            work: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """``into[key] = work()``, or the outcome of its exception; the report is written either
    way. One configuration's OOM or error does not end its stage."""
    try:
        into[key] = work()
        return into[key]
    except Exception as error:
        status, text = outcome(error)
        into[key] = {"status": status, ("error" if status in (OOM, ERROR) else "reason"): text}
        del error
        if status in (OOM, ERROR):
            ctx.session.problem(f"{key}: {status}")
            free_memory()
        return None
    finally:
        ctx.session.report["summary"] = summary(ctx)
        ctx.session.write()


def measure(ctx: Context, model: str, variant: str, built: tuple[Any, torch.dtype, list[str]],
            batch: int) -> dict[str, Any]:
    """Warm up (with the activation checks), time two step counts, and derive the rest."""
    plan, device = ctx.plan, ctx.device
    ctx.session.guard(plan.config_seconds[model], f"{model} {variant} at batch {batch}")
    pipe, dtype, applied = built
    prompt = m.prompt_embeddings(ctx.spec(model), device, dtype)
    m.reset_peaks(device)
    warmup_s, checks = m.timed(lambda: m.checked_run(
        pipe, model, prompt, plan.size, plan.warmup_steps, batch), device)
    seconds = {steps: m.timed(functools.partial(
        m.run_pipeline, pipe, model, prompt, plan.size, steps, batch), device)[0]
        for steps in plan.fit_steps}
    fixed, per_step = m.fit(seconds)
    fitted = per_step > 0
    if not fitted:  # timing noise (a shared CPU): fall back to proportional
        longest = max(seconds)
        fixed, per_step = 0.0, seconds[longest] / longest
    steps = FAMILY_STEPS[model]
    call_s = fixed + steps * per_step
    result: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."), "batch": batch, "size": plan.size,
        "applied": applied, "flags": m.torch_flags(), "warmup_s": warmup_s,
        "seconds_at_steps": seconds, "fitted": fitted, "fixed_s": fixed,
        "s_per_step": per_step, "it_per_s": 1 / per_step, "at_steps": steps,
        "s_per_image": call_s / batch, "s_per_grid": call_s * plan.grid / batch,
        **m.peaks(device), "checks": checks,
    }
    flops = ctx.flops(model)
    ceiling = ctx.ceiling(dtype)
    result["tflop_per_s"] = flops["step_tflop"] * batch / per_step
    result["of_gemm_ceiling"] = result["tflop_per_s"] / ceiling
    result["floor_s_per_image"] = (steps * flops["step_tflop"] + flops["decode_tflop"]) / ceiling
    result["vs_floor"] = result["s_per_image"] / result["floor_s_per_image"]
    for plain in PLAIN_DTYPES:
        base = ctx.grids.get((model, plain, batch))
        if base is not None:
            result[f"vs_{plain.replace('-', '_')}"] = base / result["s_per_grid"]
    ctx.grids[model, variant, batch] = result["s_per_grid"]
    if not checks["ok"]:
        ctx.session.problem(f"{model} {variant} at batch {batch}: activation check failed "
                            f"{checks}")
    return result


def summary(ctx: Context) -> dict[str, Any]:
    """The issue's goals: speedup per grid of the best run at each tier over the plain one."""
    goals: dict[str, Any] = {}
    grid = ctx.plan.grid
    tiers = {"fast": ("engine", "compiled"), "lossy": ("engine", "compiled", "engine-fp8")}
    for name, goal in GOALS.items():
        model, tier = name.split("_")
        base = ctx.grids.get((model, PLAIN[model], grid))
        runs = {variant: ctx.grids[model, variant, grid] for variant in tiers[tier]
                if (model, variant, grid) in ctx.grids}
        if base is None or not runs:
            goals[name] = {"goal": goal, "measured": False}
            continue
        best = min(runs, key=lambda variant: runs[variant])
        speedup = base / runs[best]
        goals[name] = {"goal": goal, "speedup": speedup, "by": best, "met": speedup >= goal}
    return goals


# ---- S0 -------------------------------------------------------------------------------------

def versions() -> dict[str, Any]:
    found: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                             "cuda": torch.version.cuda,
                             "cudnn": torch.backends.cudnn.version()}
    for name in ("diffusers", "transformers", "pydantic", "numpy", "pillow", "safetensors"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def describe(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"type": device.type, "name": platform.processor() or platform.machine()}
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "name": props.name, "capability": [props.major, props.minor],
            "memory_gib": props.total_memory / m.GIB,
            "multiprocessors": props.multi_processor_count}


def sdpa_backends(ctx: Context) -> dict[str, Any]:
    """Which of PyTorch's attention kernels take FLUX's attention shape here, and their speed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(ctx.plan.attention_shape, device=ctx.device, dtype=dtype)
               for _ in range(3))
    found: dict[str, Any] = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        try:
            with sdpa_kernel([getattr(SDPBackend, name)]):
                torch.nn.functional.scaled_dot_product_attention(q, k, v)  # first use
                seconds, _ = m.timed(lambda: [torch.nn.functional.scaled_dot_product_attention(
                    q, k, v) for _ in range(5)], ctx.device)
            found[name.lower()] = {"ok": True, "ms": seconds / 5 * 1000}
        except Exception as error:  # a kernel that cannot run here says why
            found[name.lower()] = {"ok": False, "why": str(error).splitlines()[0][:300]}
    return found


def s0_device(ctx: Context, result: dict[str, Any]) -> None:
    result["device"] = describe(ctx.device)
    result["versions"] = versions()
    ctx.session.write()
    result["gemm_tflops"] = {str(dtype).removeprefix("torch."): ctx.ceiling(dtype)
                             for dtype in (torch.bfloat16, torch.float16)}
    fp8: dict[str, Any] = {}
    try:
        FP8.check(ctx.device)
        fp8["tflops"] = m.fp8_gemm_tflops(ctx.device, ctx.plan.gemm_size)
    except RequestError as refused:
        fp8["skipped"] = str(refused)
    result["fp8_gemm"] = fp8
    result["sdpa"] = sdpa_backends(ctx)


# ---- S1, S2: eager SDXL and FLUX ------------------------------------------------------------

def eager(model: str) -> Callable[[Context, dict[str, Any]], None]:
    """Plain at batch 1 (against the anchor), then plain and engine at the grid batch."""

    def run(ctx: Context, result: dict[str, Any]) -> None:
        result["tflop_per_image"] = ctx.flops(model)
        configs: dict[str, Any] = result.setdefault("configs", {})
        plain = PLAIN[model]
        grid = ctx.plan.grid
        single = attempt(ctx, configs, f"{plain}@b1",
                         lambda: measure(ctx, model, plain, ctx.plain(model, plain), 1))
        if single is not None:
            anchors = ANCHORS[model]
            result["anchor"] = {
                "s_per_image": single["s_per_image"], "at_steps": FAMILY_STEPS[model],
                "h100_s_per_image": anchors["plain_s_per_image"],
                "ratio": single["s_per_image"] / anchors["plain_s_per_image"]}
            if "plain_it_per_s" in anchors:
                result["anchor"].update(it_per_s=single["it_per_s"],
                                        h100_it_per_s=anchors["plain_it_per_s"])
        attempt(ctx, configs, f"{plain}@b{grid}",
                lambda: measure(ctx, model, plain, ctx.plain(model, plain), grid))
        if model == "sdxl":  # bf16 is the engine's dtype: it separates dtype from the rest
            attempt(ctx, configs, f"plain-bf16@b{grid}", lambda: measure(
                ctx, model, "plain-bf16", ctx.plain(model, "plain-bf16"), grid))
            ctx.pipes.pop((model, "plain-bf16"), None)
        else:  # S3 saves SDXL's plain weights; FLUX's are not needed again
            ctx.pipes.pop((model, plain), None)
        free_memory()
        attempt(ctx, configs, f"engine@b{grid}",
                lambda: measure(ctx, model, "engine", ctx.engine(model), grid))
        if model == "flux" and (grid_s := ctx.grids.get((model, plain, grid))):
            result.setdefault("anchor", {}).update(
                s_per_grid=grid_s, h100_s_per_grid=ANCHORS[model]["plain_s_per_grid"])

    return run


# ---- S3: the engine's overhead --------------------------------------------------------------

def save_runner_model(ctx: Context, folder: Path) -> None:
    """SDXL the Runner can load: the full-size UNet and VAE (S1's plain fp16 weights) with
    two CLIP text encoders of the real widths but two layers, and the test models' tokenizers.

    Text encoding is a few ms of a call at full depth too; a shallow encoder keeps the saved
    model to the UNet's and VAE's size and still runs the engine's real prompt path.
    """
    import json

    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from engine.testmodels import CLIP_EOS, clip_text_model, clip_tokenizer

    pipe = ctx.plain("sdxl", PLAIN["sdxl"])[0]
    emb = ctx.spec("sdxl")["embeddings"]
    tokenizer = clip_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(CLIP_EOS)
    # SDXL concatenates the two encoders' hidden states; the second one's projection is pooled.
    first = clip_text_model(len(tokenizer), eos, projection=False,
                            hidden=emb["width"] - emb["pooled"])
    second = clip_text_model(len(tokenizer), eos, projection=True, hidden=emb["pooled"])
    runnable: Any = StableDiffusionXLPipeline(
        vae=pipe.vae, unet=pipe.unet, scheduler=EulerDiscreteScheduler(
            **ctx.spec("sdxl")["scheduler"]), text_encoder=first.to(torch.float16),
        text_encoder_2=second.to(torch.float16), tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer())
    runnable.save_pretrained(folder)
    (folder / "imaginebot.json").write_text(json.dumps({
        "family": "sdxl", "name": "bench-sdxl",
        "defaults": {"width": ctx.plan.size, "height": ctx.plan.size,
                     "steps": FAMILY_STEPS["sdxl"], "cfg": GUIDANCE["sdxl"],
                     "sampler": "euler"}}))


@contextlib.contextmanager
def counting_syncs(device: torch.device, counts: list[int]) -> Iterator[None]:
    """Append the host-device synchronisations inside the block to ``counts`` (CUDA only).

    torch.cuda.set_sync_debug_mode("warn") makes each one a Python warning: microseconds at
    points where the host waits anyway, so the block's timing stands.
    """
    if device.type != "cuda":
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    counts.append(sum("synchroniz" in str(warning.message) for warning in caught))


def s3_engine_overhead(ctx: Context, result: dict[str, Any]) -> None:
    """engine.runner.Runner against the bare pipeline it loaded, same model, batch and steps.

    The bare call is what diffusers makes with ``generator=[Generator("cpu").manual_seed(S +
    i)]``, so it must also give the Runner's images (the reproducibility contract).
    """
    from diffusers import EulerDiscreteScheduler

    from engine.outputs import save_pngs
    from engine.request import GenerationRequest, validate_request
    from engine.runner import Runner
    from engine.settings import EngineSettings

    plan, device = ctx.plan, ctx.device
    folder = ctx.work / "runner-sdxl"
    result["model"] = ("S1's SDXL UNet and VAE (random weights, fp16 on disk) with two-layer "
                       "CLIP text encoders of the real widths")
    result["save_s"] = m.timed(lambda: save_runner_model(ctx, folder), device)[0]
    ctx.drop()
    settings = EngineSettings(model=str(folder), device=device.type, tier="fast",
                              compile="off", output_dir=ctx.work / "outputs")
    runner = Runner(settings)
    result["load_s"], loaded = m.timed(lambda: runner.model(str(folder)), device)
    pipe = loaded.pipeline
    batch, seed = plan.grid, 1

    def through_runner(steps: int) -> list[Any]:
        request = validate_request(GenerationRequest(
            prompt=PROMPT, width=plan.size, height=plan.size, steps=steps, cfg=GUIDANCE["sdxl"],
            sampler="euler", seed=seed, count=batch), settings)
        return runner.txt2img([request], lambda *_: None, lambda: False)[0].images

    def bare(steps: int) -> list[Any]:
        pipe.scheduler = EulerDiscreteScheduler.from_config(loaded.scheduler_config)
        return list(pipe(prompt=[PROMPT] * batch, height=plan.size, width=plan.size,
                         num_inference_steps=steps, guidance_scale=GUIDANCE["sdxl"],
                         generator=[torch.Generator("cpu").manual_seed(seed + i)
                                    for i in range(batch)]).images)

    sides: dict[str, Callable[[int], list[Any]]] = {"runner": through_runner, "bare": bare}
    images: dict[str, list[Any]] = {}
    for name, call in sides.items():
        ctx.session.guard(plan.config_seconds["sdxl"], f"S3 {name}")
        warmup_s, images[name] = m.timed(functools.partial(call, plan.warmup_steps), device)
        seconds: dict[int, float] = {}
        syncs: list[int] = []
        for steps in plan.fit_steps:
            with counting_syncs(device, syncs):
                seconds[steps] = m.timed(functools.partial(call, steps), device)[0]
        fixed, per_step = m.fit(seconds)
        result[name] = {"warmup_s": warmup_s, "seconds_at_steps": seconds, "fixed_s": fixed,
                        "s_per_step": per_step}
        if syncs:
            sync_fixed, sync_per_step = m.fit(dict(zip(plan.fit_steps, map(float, syncs),
                                                       strict=True)))
            result[name]["syncs"] = {"at_steps": dict(zip(plan.fit_steps, syncs, strict=True)),
                                     "per_step": sync_per_step, "per_call": sync_fixed}
        ctx.session.write()
    longest = max(plan.fit_steps)
    runner_s, bare_s = result["runner"], result["bare"]
    result["overhead"] = {
        f"at_{longest}_steps": runner_s["seconds_at_steps"][longest]
        / bare_s["seconds_at_steps"][longest] - 1,
        "per_step": runner_s["s_per_step"] / bare_s["s_per_step"] - 1,
        "fixed_s": runner_s["fixed_s"] - bare_s["fixed_s"]}
    result["runner_vs_bare"] = m.drift(images["bare"], images["runner"])
    files = [(image, ctx.work / "png" / f"{i}.png", "bench") for i, image in
             enumerate(images["runner"])]
    result["png"] = {"compression": settings.png_compression,
                     "s_per_grid": m.timed(lambda: save_pngs(
                         files, settings.png_compression), device)[0]}
    if result["runner_vs_bare"]["max_abs_diff"] != 0:
        ctx.session.problem(f"S3: the Runner's images differ from the bare pipeline's "
                            f"{result['runner_vs_bare']}")


# ---- S4: memory -----------------------------------------------------------------------------

def s4_memory(ctx: Context, result: dict[str, Any]) -> None:
    """Peak memory of a batch of ``big_batch`` images and of one decode at the upscale's size."""
    plan, device = ctx.plan, ctx.device
    for model in ("sdxl", "flux"):
        def batch_peak(model: str = model) -> dict[str, Any]:
            ctx.session.guard(plan.config_seconds[model], f"{model} batch {plan.big_batch}")
            pipe, dtype, _ = ctx.engine(model)
            prompt = m.prompt_embeddings(ctx.spec(model), device, dtype)
            m.reset_peaks(device)
            seconds, checks = m.timed(lambda: m.checked_run(
                pipe, model, prompt, plan.size, plan.warmup_steps, plan.big_batch), device)
            return {"batch": plan.big_batch, "steps": plan.warmup_steps, "seconds": seconds,
                    **m.peaks(device), "checks": checks}

        def decode_peak(model: str = model) -> dict[str, Any]:
            pipe, _, _ = ctx.engine(model)
            vae = pipe.vae
            side = plan.upscale_size // m.vae_scale(ctx.spec(model))
            latents = torch.randn(1, vae.config.latent_channels, side, side,
                                  generator=torch.Generator("cpu").manual_seed(2)).to(
                device, vae.dtype)
            m.reset_peaks(device)
            with torch.inference_mode():
                seconds, image = m.timed(lambda: vae.decode(latents, return_dict=False)[0],
                                         device)
            return {"size": plan.upscale_size, "vae_dtype": str(vae.dtype).removeprefix("torch."),
                    "seconds": seconds,
                    "finite": bool(torch.isfinite(image).all()),
                    "image_std": float(image.float().std()), **m.peaks(device)}

        attempt(ctx, result, f"{model}@b{plan.big_batch}", batch_peak)
        attempt(ctx, result, f"{model}-decode-{plan.upscale_size}", decode_peak)
    ctx.drop()


# ---- S5: drift per tier on the demo model ---------------------------------------------------

def s5_drift(ctx: Context, result: dict[str, Any]) -> None:
    """The shipped demo model through the Runner at each tier, against the reference tier.

    ``reference`` is run twice, in two Runners: its drift must be exactly zero, and so must
    that of ``fast-remake``, the fast tier's pipeline under engine.speed.reference_kernels (how
    an upscale remakes a deleted image).
    """
    from engine.request import GenerationRequest, validate_request
    from engine.runner import Runner
    from engine.settings import DEMO_MODEL, EngineSettings
    from engine.speed import reference_kernels

    tiers: dict[str, Speed] = {"reference": Speed(tier="reference"), "fast": FAST, "lossy": FP8}
    images: dict[str, list[Any]] = {}

    def generate(speed: Speed, remake: bool = False) -> list[Any]:
        settings = EngineSettings(model=DEMO_MODEL, device=ctx.device.type, tier=speed.tier,
                                  quantize=speed.quantize, preview_every=0,
                                  output_dir=ctx.work / "outputs")
        request = validate_request(GenerationRequest(
            prompt="a red circle on a blue background", seed=11, steps=ctx.plan.drift_steps,
            count=ctx.plan.drift_images), settings)
        runner = Runner(settings)
        with (reference_kernels(runner.pipeline(DEMO_MODEL)) if remake
              else contextlib.nullcontext()):
            return runner.txt2img([request], lambda *_: None, lambda: False)[0].images

    images["reference"] = generate(tiers["reference"])
    for name, speed in tiers.items():
        def one(speed: Speed = speed) -> dict[str, Any]:
            try:
                speed.check(ctx.device)
            except RequestError as refused:
                raise Skip(str(refused)) from None
            return {"tier": speed.effective_tier,
                    **m.drift(images["reference"], generate(speed))}

        attempt(ctx, result, name, one)
    attempt(ctx, result, "fast-remake", lambda: {
        "tier": "reference", **m.drift(images["reference"], generate(FAST, remake=True))})
    for name in ("reference", "fast-remake"):
        if result.get(name, {}).get("max_abs_diff") != 0:
            ctx.session.problem(f"S5: {name} is not bitwise the reference tier: {result[name]}")


# ---- S6: FP8 --------------------------------------------------------------------------------

def s6_fp8(ctx: Context, result: dict[str, Any]) -> None:
    try:
        FP8.check(ctx.device)
    except RequestError as refused:
        raise Skip(str(refused)) from None
    ctx.drop()
    def quantized(model: str) -> dict[str, Any]:
        return measure(ctx, model, "engine-fp8", ctx.engine(model, FP8, keep=False),
                       ctx.plan.grid)

    for model in ("sdxl", "flux"):
        attempt(ctx, result, f"{model} engine-fp8@b{ctx.plan.grid}",
                functools.partial(quantized, model))
        free_memory()


# ---- S7, S8: compiled -----------------------------------------------------------------------

def compiled(model: str) -> Callable[[Context, dict[str, Any]], None]:
    """``compile=default`` at the grid batch; the warm-up's extra time is the compile."""

    def run(ctx: Context, result: dict[str, Any]) -> None:
        ctx.drop()
        torch._dynamo.reset()
        measured = attempt(ctx, result, f"compiled@b{ctx.plan.grid}", lambda: measure(
            ctx, model, "compiled", ctx.engine(model, COMPILED, keep=False), ctx.plan.grid))
        if measured is not None:
            eager_warmup = measured["fixed_s"] + ctx.plan.warmup_steps * measured["s_per_step"]
            result["compile_s"] = measured["warmup_s"] - eager_warmup
            engine = ctx.grids.get((model, "engine", ctx.plan.grid))
            if engine is not None:
                measured["vs_engine_eager"] = engine / measured["s_per_grid"]
            if "compiled_s_per_grid" in ANCHORS[model]:
                result["anchor"] = {"s_per_grid": measured["s_per_grid"],
                                    "h100_s_per_grid": ANCHORS[model]["compiled_s_per_grid"]}
        free_memory()

    return run


STAGES = (
    Stage("S0", "device, versions, GEMM ceiling, SDPA backends", s0_device),
    Stage("S1", "SDXL eager: plain fp16 at batch 1 and 4, plain bf16 and engine at 4",
          eager("sdxl")),
    Stage("S2", "FLUX eager: plain bf16 at batch 1 and 4, engine at 4", eager("flux")),
    Stage("S3", "engine overhead: the Runner against the bare pipeline, PNG time",
          s3_engine_overhead),
    Stage("S4", "memory: batch 8 and a decode at the upscale's size", s4_memory),
    Stage("S5", "drift per tier on the demo model", s5_drift),
    Stage("S6", "FP8 (quantize=fp8, lossy tier)", s6_fp8),
    Stage("S7", "FLUX compiled (regional)", compiled("flux")),
    Stage("S8", "SDXL compiled", compiled("sdxl")),
)
