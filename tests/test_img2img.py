"""Image prompts (img2img): safe decoding, the stored source, validation, price, and the
reproducibility contract against diffusers' own img2img pipeline on the tiny SD1.5 model."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest
from PIL import Image

from bot.pricing import cost_for, request_cost
from bot.settings import Settings
from engine import image_prompt
from engine.cli import add_generate_arguments, generate_command
from engine.errors import RequestError
from engine.outputs import a1111_parameters, parse_parameters
from engine.request import DEFAULT_STRENGTH, GenerationRequest, validate_request
from engine.settings import EngineSettings

LIMIT = 1024 * 1024


def encoded(image: Image.Image, kind: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def gradient(width: int = 48, height: int = 40) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)
    pixels[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    return Image.fromarray(pixels)


# -- decoding what strangers send -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_are_decoded_fitted_and_rgb(kind):
    image = image_prompt.decode(encoded(gradient(), kind), LIMIT)
    fitted = image_prompt.fit(image, 32, 16)
    assert fitted.size == (32, 16) and fitted.mode == "RGB"


def test_transparency_is_flattened_onto_white():
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    fitted = image_prompt.fit(image_prompt.decode(encoded(clear), LIMIT), 8, 8)
    assert fitted.getpixel((4, 4)) == (255, 255, 255)


@pytest.mark.parametrize(("data", "says"), [
    (b"%PDF-1.4 not an image at all", "must be a PNG, JPEG or WebP"),
    (encoded(Image.new("RGB", (8, 8)), "GIF"), "must be a PNG, JPEG or WebP"),
    (encoded(Image.new("RGB", (8, 8)), "BMP"), "must be a PNG, JPEG or WebP"),
    (encoded(Image.effect_noise((64, 64), 64))[:2000], "damaged"),
    # 100 megapixels of one colour: a few kilobytes that would need 100 MB decoded
    (encoded(Image.new("1", (10_000, 10_000))), "too many pixels"),
    (b"\x89PNG" + bytes(LIMIT), "image prompts may be at most 1.0 MB"),
])
def test_what_is_not_a_safe_image_is_refused_with_one_sentence(data, says):
    with pytest.raises(RequestError, match=says):
        image_prompt.decode(data, LIMIT)


def test_the_source_is_stored_once_by_its_hash_and_checked_when_read(tmp_path):
    fitted = image_prompt.fit(gradient(), 32, 32)
    digest = image_prompt.store(fitted, tmp_path)
    assert image_prompt.store(fitted, tmp_path) == digest
    assert [p.name for p in (tmp_path / "sources").iterdir()] == [f"{digest}.png"]
    assert list(image_prompt.load_source(tmp_path, digest).getdata()) == list(fitted.getdata())
    image_prompt.source_path(tmp_path, digest).write_bytes(encoded(gradient(32, 32).rotate(90)))
    with pytest.raises(RequestError, match="changed"):
        image_prompt.load_source(tmp_path, digest)
    with pytest.raises(RequestError, match="no longer"):
        image_prompt.load_source(tmp_path, "0" * 64)
    with pytest.raises(RequestError, match="sha256"):
        image_prompt.load_source(tmp_path, "../../etc/passwd")


# -- validation, records and price ------------------------------------------------------------

@pytest.fixture(scope="module")
def sd15(tiny_model):
    return EngineSettings(model=str(tiny_model("sd15")), preview_every=0, device="cpu")


def test_strength_defaults_and_its_range_is_checked(sd15):
    digest = "a" * 64
    resolved = validate_request(GenerationRequest(prompt="x", source_image=digest), sd15)
    assert resolved.strength == DEFAULT_STRENGTH
    for bad in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(RequestError, match="strength must be above 0 and at most 1"):
            validate_request(GenerationRequest(prompt="x", source_image=digest, strength=bad),
                             sd15)
    with pytest.raises(RequestError, match="needs an image prompt"):
        validate_request(GenerationRequest(prompt="x", strength=0.5), sd15)
    varied = validate_request(GenerationRequest(prompt="x", source_image=digest, strength=0.4,
                                                variation_seed=1, variation_strength=0.3),
                              sd15)  # a variation keeps its image prompt
    assert (varied.source_image, varied.strength, varied.variation_seed,
            varied.variation_strength) == (digest, 0.4, 1, 0.3)


def test_a_request_without_the_new_fields_keeps_its_json():
    plain = GenerationRequest(prompt="x", job_id="j")
    assert not {"source_image", "strength", "style"} & set(plain.model_dump(mode="json"))
    rich = GenerationRequest(prompt="x", job_id="j", source_image="a" * 64, strength=0.3,
                             style="Noir")
    assert GenerationRequest.model_validate(json.loads(rich.model_dump_json())) == rich


def test_the_price_is_a_generation_of_steps_times_strength():
    settings = Settings(price_base_pixels=64 * 64, price_base_steps=1)
    request = GenerationRequest(prompt="x", width=64, height=64, steps=20, count=2,
                                source_image="a" * 64, strength=0.5)
    assert request_cost(settings, request) == cost_for(settings, 64, 64, 10, 2) == 20
    text = request.model_copy(update={"source_image": None, "strength": None})
    assert request_cost(settings, text) == cost_for(settings, 64, 64, 20, 2) == 40


def test_strength_and_source_hash_are_in_the_png_parameters():
    request = GenerationRequest(prompt="x", steps=20, cfg=7, seed=3, width=32, height=32,
                                sampler="euler", source_image="b" * 64, strength=0.45)
    text = a1111_parameters(request, 3, {})
    assert "Denoising strength: 0.45" in text and f"Init image hash: {'b' * 64}" in text
    parsed = parse_parameters(text)
    assert (parsed["strength"], parsed["source_image"]) == (0.45, "b" * 64)


# -- the reproducibility contract ---------------------------------------------------------------

@pytest.fixture(scope="module")
def warm(sd15, tmp_path_factory):
    """The engine's runner and a plain diffusers img2img pipeline, loaded once."""
    from diffusers import AutoPipelineForImage2Image, DiffusionPipeline

    from engine.runner import Runner

    settings = sd15.model_copy(update={"output_dir": tmp_path_factory.mktemp("outputs")})
    plain = DiffusionPipeline.from_pretrained(sd15.model)
    config = plain.scheduler.config
    pipe = AutoPipelineForImage2Image.from_pipe(plain)
    pipe.set_progress_bar_config(disable=True)
    return settings, Runner(settings), pipe, config


def _run(runner, request):
    return runner.txt2img([request], lambda *_: None, lambda: False)[0]


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m_karras"])
@pytest.mark.parametrize("strength", [0.35, 0.8])
def test_image_i_is_diffusers_img2img_with_seed_s_plus_i(warm, sampler, strength):
    import torch

    from engine.samplers import make_scheduler

    settings, runner, pipe, config = warm
    source = image_prompt.fit(gradient(), 32, 32)
    digest = image_prompt.store(source, settings.output_dir)
    request = validate_request(GenerationRequest(
        prompt="a red fox", negative_prompt="blurry", steps=8, cfg=7.0, seed=11, count=2,
        sampler=sampler, width=32, height=32, source_image=digest, strength=strength),
        settings)
    ours = _run(runner, request)

    pipe.scheduler = make_scheduler(sampler, config, (sampler,))
    theirs = pipe(prompt=["a red fox"] * 2, negative_prompt=["blurry"] * 2, image=source,
                  strength=strength, num_inference_steps=8, guidance_scale=7.0,
                  generator=[torch.Generator("cpu").manual_seed(11 + i) for i in range(2)]
                  ).images
    assert ours.seeds == [11, 12]
    for mine, reference in zip(ours.images, theirs, strict=True):
        difference = np.abs(np.asarray(mine, np.int16) - np.asarray(reference, np.int16))
        assert difference.max() <= 1
    assert not np.array_equal(np.asarray(ours.images[0]), np.asarray(source))  # it redrew

    # U and /show remake image 1 alone from its own seed
    alone = _run(runner, request.model_copy(update={"seed": 12, "count": 1}))
    difference = np.asarray(alone.images[0], np.int16) - np.asarray(ours.images[1], np.int16)
    assert np.abs(difference).max() <= 1  # batch size changes float rounding only


def _written_out_slerp(t, a, b):
    """slerp as docs/engine.md writes it, independent of engine.noise (t > 0 here)."""
    import torch

    af, bf = a.double().flatten(), b.double().flatten()
    theta = torch.arccos((af @ bf / (af.norm() * bf.norm())).clamp(-1, 1))
    mixed = (torch.sin((1 - t) * theta) * af + torch.sin(t * theta) * bf) / torch.sin(theta)
    return mixed.reshape(a.shape).to(a.dtype)


def test_a_variation_of_an_image_prompt_is_img2img_with_the_slerped_noise(warm, monkeypatch):
    """Plain diffusers, generators all seeded S, whose pipeline module's randn_tensor returns
    its own draw (the base noise) with the earlier variation and then V + i slerped in."""
    import sys

    import torch

    from engine.samplers import make_scheduler

    settings, runner, pipe, config = warm
    source = image_prompt.fit(gradient(), 32, 32)
    digest = image_prompt.store(source, settings.output_dir)
    request = validate_request(GenerationRequest(
        prompt="a red fox", steps=8, cfg=7.0, seed=11, count=2, sampler="euler_a",
        width=32, height=32, source_image=digest, strength=0.8, variation_seed=70,
        variation_strength=0.4, earlier_variations=({"seed": 40, "strength": 0.5},)),
        settings)
    ours = _run(runner, request)

    module = sys.modules[type(pipe).__module__]
    drawn_by_pipeline = module.randn_tensor

    def slerped(shape, generator=None, device=None, dtype=None, **kwargs):
        drawn = drawn_by_pipeline(shape, generator=generator, device=device, dtype=dtype,
                                  **kwargs)
        row_shape = (1, *shape[1:])
        rows = []
        for i in range(shape[0]):
            earlier = torch.randn(row_shape, generator=torch.Generator("cpu").manual_seed(40),
                                  dtype=dtype)
            variation = torch.randn(row_shape, dtype=dtype,
                                    generator=torch.Generator("cpu").manual_seed(70 + i))
            base = _written_out_slerp(0.5, drawn[i:i + 1], earlier)
            rows.append(_written_out_slerp(0.4, base, variation))
        return torch.cat(rows)

    monkeypatch.setattr(module, "randn_tensor", slerped)
    pipe.scheduler = make_scheduler("euler_a", config, ("euler_a",))
    theirs = pipe(prompt=["a red fox"] * 2, image=source, strength=0.8, num_inference_steps=8,
                  guidance_scale=7.0,
                  generator=[torch.Generator("cpu").manual_seed(11) for _ in range(2)]).images
    assert ours.seeds == [11, 11] and ours.metadata["variation_seeds"] == [70, 71]
    for mine, reference in zip(ours.images, theirs, strict=True):
        difference = np.abs(np.asarray(mine, np.int16) - np.asarray(reference, np.int16))
        assert difference.max() <= 1
    assert not np.array_equal(np.asarray(ours.images[0]), np.asarray(ours.images[1]))


def test_variation_strength_0_is_the_unvaried_image_prompt(warm):
    settings, runner, _, _ = warm
    digest = image_prompt.store(image_prompt.fit(gradient(), 32, 32), settings.output_dir)
    plain = validate_request(GenerationRequest(
        prompt="a red fox", steps=6, seed=12, width=32, height=32, sampler="euler_a",
        source_image=digest, strength=0.7), settings)
    unvaried = _run(runner, plain).images[0]
    varied = _run(runner, plain.model_copy(update={"variation_seed": 99,
                                                   "variation_strength": 0.0})).images[0]
    assert np.array_equal(np.asarray(unvaried), np.asarray(varied))
    moved = _run(runner, plain.model_copy(update={"variation_seed": 99,
                                                  "variation_strength": 0.5})).images[0]
    assert not np.array_equal(np.asarray(unvaried), np.asarray(moved))


# -- imaginebot generate refuses before starting a worker ---------------------------------------

def _generate(settings, *argv):
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    return generate_command(parser.parse_args(list(argv)), settings)


@pytest.mark.parametrize(("argv", "says"), [
    (["a cat", "--image", "{text}"], "must be a PNG, JPEG or WebP"),
    (["a cat", "--image", "{big}"], "image prompts may be at most"),
    (["a cat", "--image", "{png}", "--strength", "1.5"], "strength must be above 0"),
    (["a cat", "--image", "{missing}"], "cannot read"),
    (["a cat", "--strength", "0.5"], "--strength applies to an image prompt"),
    (["a cat", "--style", "Noir"], "unknown style 'Noir'"),
    (["a cat --ar 9:1"], "--ar 9:1 is too narrow"),
    (["a cat --quality 2"], "unknown flag --quality"),
])
def test_generate_refuses_bad_image_prompts_styles_and_flags(sd15, tmp_path, capsys, argv,
                                                             says):
    files = {"text": tmp_path / "notes.txt", "big": tmp_path / "big.png",
             "png": tmp_path / "ok.png", "missing": tmp_path / "gone.png"}
    files["text"].write_text("not an image")
    files["big"].write_bytes(bytes(2048))
    files["png"].write_bytes(encoded(gradient()))
    settings = sd15.model_copy(update={"output_dir": tmp_path / "out",
                                       "image_prompt_max_bytes": 1024})
    argv = [arg.format(**{name: str(path) for name, path in files.items()}) for arg in argv]
    assert _generate(settings, *argv) == 2
    error = capsys.readouterr().err
    assert says in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing was stored or run


@pytest.mark.slow
def test_generate_from_an_image_with_flags_and_a_style(tiny_model, tmp_path):
    """``imaginebot generate`` as a user runs it: a subprocess with its own worker."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from engine.outputs import read_parameters

    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nNoir,noir {prompt},\n")
    (tmp_path / "fox.webp").write_bytes(encoded(gradient(), "WEBP"))
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("IMAGINEBOT_")}
    env |= {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
            "IMAGINEBOT_MODEL": str(tiny_model("sd15")),
            "IMAGINEBOT_STYLES_FILE": str(tmp_path / "styles.csv")}
    out = tmp_path / "shots"
    result = subprocess.run(
        [sys.executable, "-m", "bot", "generate", "a fox --ar 2:1 --seed 5 --steps 4",
         "--style", "Noir", "--image", "fox.webp", "--strength", "0.5", "--count", "1",
         "--device", "cpu", "--dtype", "float32", "--out", str(out), "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    parameters = parse_parameters(read_parameters(out / "0.png") or "")
    assert parameters["prompt"] == "noir a fox" and parameters["style"] == "Noir"
    assert (parameters["seed"], parameters["steps"], parameters["strength"]) == (5, 4, 0.5)
    assert Image.open(out / "0.png").size == (parameters["width"], parameters["height"])
    assert parameters["width"] > parameters["height"]
    source = tmp_path / "sources" / f"{parameters['source_image']}.png"
    assert Image.open(source).size == Image.open(out / "0.png").size
