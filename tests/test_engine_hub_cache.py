"""Hub ids load from the local Hugging Face cache only, with no network."""

from __future__ import annotations

import shutil

import huggingface_hub.constants

from engine.families import model_info
from engine.runner import Runner
from engine.settings import EngineSettings

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_hub_id_loads_from_the_local_cache(tiny_model, tmp_path, monkeypatch):
    # The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}
    repo = tmp_path / "hub" / "models--tiny-org--tiny-sd15"
    shutil.copytree(tiny_model("sd15"), repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    settings = EngineSettings(model="tiny-org/tiny-sd15", device="cpu")
    info = model_info("tiny-org/tiny-sd15", settings)
    assert (info.ref, info.family.name, info.width) == ("tiny-org/tiny-sd15", "sd15", 32)
    pipe = Runner(settings).pipeline("tiny-org/tiny-sd15")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
