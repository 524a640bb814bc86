"""One .safetensors checkpoint in the original (non-diffusers) layout, loaded offline.

engine.testmodels.save_single_file writes the tiny SD 1.x model in the original key layout
(diffusers has converters only in the other direction); loading goes through
``from_single_file(config=<local diffusers folder>)``, as for a real checkpoint.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.families import model_info
from engine.request import GenerationRequest, RequestError, validate_request
from engine.runner import Runner
from engine.settings import EngineSettings
from engine.testmodels import save_single_file


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    folder = tiny_model("sd15")
    path = save_single_file(folder, tmp_path_factory.mktemp("single") / "tiny-sd15.safetensors")
    return folder, path


def _image(settings: EngineSettings):
    request = validate_request(GenerationRequest(prompt="a cat", seed=5, count=1,
                                                 width=32, height=32, steps=2), settings)
    return np.asarray(Runner(settings).txt2img([request], lambda *_: None,
                                               lambda: False)[0].images[0])


def test_single_file_gives_the_same_images_as_the_folder(checkpoint):
    folder, path = checkpoint
    path.with_name("tiny-sd15.imaginebot.json").write_text(json.dumps({"config": str(folder)}))
    info = model_info(str(path), EngineSettings())
    assert info.family.name == "sd15"  # detected from the state-dict keys
    assert info.config == str(folder)
    from_file = _image(EngineSettings(model=str(path), device="cpu"))
    from_folder = _image(EngineSettings(model=str(folder), device="cpu"))
    assert np.array_equal(from_file, from_folder)


def test_single_file_without_local_config_fails_clearly(checkpoint, tmp_path):
    _, path = checkpoint
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes(path.read_bytes())
    settings = EngineSettings(model=str(lonely), device="cpu")
    request = validate_request(GenerationRequest(prompt="a cat", width=32, height=32,
                                                 steps=1, count=1), settings)
    with pytest.raises(RequestError, match="model lonely could not be loaded") as refused:
        Runner(settings).txt2img([request], lambda *_: None, lambda: False)
    assert str(tmp_path) not in str(refused.value)  # the reason, with its paths, is logged
