"""Model choice: members pick allowed models by name; the shell user may name any model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.families import (
    UNKNOWN_MODEL,
    allowed_model_info,
    display_name,
    model_names,
    pick_model,
)
from engine.request import GenerationRequest, RequestError, validate_request
from engine.settings import EngineSettings


@pytest.mark.parametrize(("ref", "name"), [
    ("demo", "demo"),
    ("/srv/models/dreamy-v2", "dreamy-v2"),
    ("/srv/models/dreamy-v2/", "dreamy-v2"),
    ("/srv/models/sd-1.5", "sd-1.5"),
    ("~/ckpt/juggernaut.safetensors", "juggernaut"),
    ("stabilityai/sdxl-turbo", "sdxl-turbo"),
    ("/", "model"),
    ("/m/" + "x" * 300, "x" * 90),
])
def test_display_names_are_folder_file_or_hub_names(ref: str, name: str):
    assert display_name(ref) == name


def test_every_allowed_model_has_a_name_of_its_own_in_allowlist_order():
    settings = EngineSettings(model="/a/sd15", models=["/b/sd15", "/c/SD15.safetensors", "demo",
                                                       "org/sd15"])
    assert model_names(settings) == {
        "sd15": "/a/sd15", "sd15 (2)": "/b/sd15", "SD15 (3)": "/c/SD15.safetensors",
        "demo": "demo", "sd15 (4)": "org/sd15"}


def test_members_pick_by_name_and_a_path_is_just_an_unknown_name(tmp_path: Path):
    folder = tmp_path / "dreamy"
    folder.mkdir()
    settings = EngineSettings(models=[str(folder)])
    assert pick_model("dreamy", settings) == str(folder)
    assert pick_model(" DREAMY ", settings) == str(folder)
    assert pick_model("demo", settings) == "demo"
    for value in [str(folder), "/etc/passwd", "/root", str(tmp_path / "missing"), "dreamy (2)",
                  "x" * 100]:
        with pytest.raises(RequestError) as caught:
            pick_model(value, settings)
        assert (caught.value.field, str(caught.value)) == ("model", UNKNOWN_MODEL)


def test_a_model_outside_the_allowlist_is_refused_before_any_file_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Compared as a string: the filesystem never learns what a member typed."""
    probes = [tmp_path / "secret.txt", tmp_path / "missing", tmp_path]
    probes[0].write_text("not a model")
    touched: list[str] = []
    real_stat = os.stat

    def spy(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if isinstance(path, str | os.PathLike) and Path(path) in probes:
            touched.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", spy)
    settings = EngineSettings()
    for probe in map(str, probes):
        with pytest.raises(RequestError) as caught:
            allowed_model_info(probe, settings)
        assert str(caught.value) == UNKNOWN_MODEL
        with pytest.raises(RequestError) as caught:
            validate_request(GenerationRequest(prompt="x", model=probe), settings)
        assert str(caught.value) == UNKNOWN_MODEL
    assert touched == []
    Path(tmp_path).exists()  # the spy works: this is recorded
    assert touched == [str(tmp_path)]


def test_the_shell_user_may_name_any_model(tiny_model):
    folder = tiny_model("sd15")
    settings = EngineSettings()  # only the demo model is allowed
    request = GenerationRequest(prompt="x", model=str(folder))
    with pytest.raises(RequestError, match="not available here"):
        validate_request(request, settings)
    resolved = validate_request(request, settings, any_model=True)
    assert resolved.model == str(folder.resolve()) and resolved.width == 32
    with pytest.raises(RequestError, match=r"is not a \.safetensors file"):
        validate_request(request.model_copy(update={"model": str(folder / "model_index.json")}),
                         settings, any_model=True)
