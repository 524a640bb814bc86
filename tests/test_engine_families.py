"""Family facts, native sizes per aspect, and detection from a model's own files."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.families import (
    ASPECTS,
    FAMILIES,
    Family,
    aspect_size,
    display_name,
    family_from_folder,
    family_from_keys,
    model_info,
    resolve_model,
)
from engine.request import RequestError
from engine.settings import EngineSettings


def test_published_native_sizes():
    assert aspect_size(FAMILIES["sd15"], "1:1") == (512, 512)
    sdxl = FAMILIES["sdxl"]
    assert aspect_size(sdxl, "1:1") == (1024, 1024)
    assert aspect_size(sdxl, "16:9") == (1344, 768)
    assert aspect_size(sdxl, "9:16") == (768, 1344)
    assert aspect_size(sdxl, "4:3") == (1152, 896)
    assert aspect_size(sdxl, "3:2") == (1216, 832)


@given(family=st.sampled_from(sorted(FAMILIES)), aspect=st.sampled_from(ASPECTS))
def test_aspect_sizes_keep_orientation_multiple_and_area(family, aspect):
    spec: Family = FAMILIES[family]
    width, height = aspect_size(spec, aspect)
    a, b = (int(x) for x in aspect.split(":"))
    assert width % spec.size_multiple == 0 and height % spec.size_multiple == 0
    assert (width > height) == (a > b) and (width == height) == (a == b)
    assert 0.8 <= width * height / spec.base_size**2 <= 1.05
    assert abs(width / height - a / b) / (a / b) < 0.15


def test_model_defaults_scale_aspects(tiny_model):
    info = model_info(str(tiny_model("sd15")), EngineSettings())
    assert (info.width, info.height, info.steps) == (32, 32, 2)
    assert aspect_size(info, "1:1") == (32, 32)
    width, height = aspect_size(info, "16:9")
    assert width > height and width % 8 == 0 and height % 8 == 0
    assert aspect_size(info, "4:1") == (64, 16)  # any ratio, as a prompt's --ar
    with pytest.raises(RequestError, match="aspect must be width:height"):
        aspect_size(info, "5:1")


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux", "sd3"])
def test_family_detected_from_model_index(tiny_model, family):
    assert family_from_folder(tiny_model(family)) == family


def test_flux_without_guidance_embedding_is_schnell(tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model("flux"), tmp_path / "flux")
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["guidance_embeds"] = False
    config_path.write_text(json.dumps(config))
    (folder / "imaginebot.json").unlink()
    info = model_info(str(folder), EngineSettings())
    assert info.family.name == "flux-schnell" and not info.family.uses_cfg
    assert info.steps == FAMILIES["flux-schnell"].steps


def test_sdxl_turbo_by_name(tiny_model, tmp_path):
    folder = shutil.copytree(tiny_model("sdxl"), tmp_path / "my-sdxl-turbo")
    (folder / "imaginebot.json").unlink()
    assert model_info(str(folder), EngineSettings()).family.name == "sdxl-turbo"


@pytest.mark.parametrize(("keys", "family"), [
    ({"model.diffusion_model.input_blocks.0.0.weight",
      "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"}, "sd15"),
    ({"model.diffusion_model.input_blocks.0.0.weight",
      "cond_stage_model.model.token_embedding.weight"}, "sd2"),
    ({"conditioner.embedders.1.model.ln_final.weight"}, "sdxl"),
    ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"}, "sd3"),
    ({"double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight"}, "flux"),
    ({"double_blocks.0.img_attn.qkv.weight"}, "flux-schnell"),
    ({"something.else"}, None),
])
def test_family_from_checkpoint_keys(keys, family):
    assert family_from_keys(keys) == family


def test_demo_and_paths_resolve(tmp_path):
    settings = EngineSettings()
    assert resolve_model("demo", settings).endswith("engine/demo/model")
    assert resolve_model("org/some-model", settings) == "org/some-model"
    assert resolve_model(str(tmp_path), settings) == str(tmp_path.resolve())


def test_unusable_models_are_request_errors(tmp_path):
    settings = EngineSettings()
    with pytest.raises(RequestError, match=r"not a \.safetensors file"):
        (tmp_path / "model.ckpt").write_bytes(b"x")
        model_info(str(tmp_path / "model.ckpt"), settings)
    with pytest.raises(RequestError, match="cannot read model file"):
        (tmp_path / "broken.safetensors").write_bytes(b"not a header")
        model_info(str(tmp_path / "broken.safetensors"), settings)
    with pytest.raises(RequestError, match="no supported family"):
        (tmp_path / "empty").mkdir()
        model_info(str(tmp_path / "empty"), settings)
    with pytest.raises(RequestError, match="was not found"):
        model_info("nobody/not-in-the-cache", settings)


def test_a_models_name_is_its_display_name_dots_and_all(tiny_model, tmp_path):
    """The name in PNGs and embeds is the one members pick by: a folder's whole name."""
    link = tmp_path / "sd-1.5"
    shutil.copytree(tiny_model("sd15"), link)
    sidecar = json.loads((link / "imaginebot.json").read_text())
    del sidecar["name"]  # the tiny models name themselves; this one is named by its folder
    (link / "imaginebot.json").write_text(json.dumps(sidecar))
    settings = EngineSettings()
    assert model_info(str(link), settings).name == display_name(str(link)) == "sd-1.5"
    assert model_info("demo", settings).name == "demo"


def test_the_demo_model_is_named_demo_even_once_resolved() -> None:
    """The worker reports the resolved folder; members must still see `demo`, not `model`."""
    assert display_name(resolve_model("demo", EngineSettings())) == "demo"
