"""``imaginebot generate`` and ``make-test-model`` run as a user runs them: a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.outputs import read_parameters

# Slow: every test starts a Python process that imports torch.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def imaginebot(*args: str, cwd: Path, model: Path | None = None,
               timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("IMAGINEBOT_")}
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"  # a tiny model; spare the shared CI machine thread contention
    if model is not None:
        env["IMAGINEBOT_MODEL"] = str(model)
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "tiny"
    result = imaginebot("make-test-model", "--family", "sd15", str(folder), cwd=folder.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(folder)
    return folder


def test_make_test_model_writes_a_diffusers_folder(model: Path):
    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert json.loads((model / "imaginebot.json").read_text())["family"] == "sd15"


def test_generate_json_writes_images_and_grid_into_out(model: Path, tmp_path: Path):
    out = tmp_path / "shots"
    result = imaginebot("generate", "a red circle", "--steps", "2", "--count", "4", "--seed", "7",
                        "--sampler", "euler", "--width", "32", "--height", "32", "--device",
                        "cpu", "--dtype", "float32", "--out", str(out), "--json",
                        cwd=tmp_path, model=model)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert [Path(image["path"]) for image in report["images"]] == [out / f"{i}.png"
                                                                   for i in range(4)]
    assert [image["seed"] for image in report["images"]] == [7, 8, 9, 10]
    assert report["grid"] == str(out / "grid.png")
    assert Image.open(out / "grid.png").size == (64, 64)
    assert report["sampler"] == "euler" and report["model"] and report["seconds"] > 0
    text = read_parameters(out / "3.png")
    assert text is not None and "Seed: 10" in text and "Steps: 2" in text


def test_generate_shows_progress_and_lists_files(model: Path, tmp_path: Path):
    result = imaginebot("generate", "a blue square", "--steps", "3", "--count", "1",
                        "--device", "cpu", cwd=tmp_path, model=model)
    assert result.returncode == 0, result.stderr
    assert "step 1/3" in result.stderr and "step 3/3" in result.stderr
    (line,) = result.stdout.splitlines()
    path = Path(line.split("  ")[0])
    # Without --out the job gets its own folder under the default output_dir.
    assert path.name == "0.png" and path.parent.parent == (tmp_path / "outputs").resolve()
    assert Image.open(path).size == (32, 32)


def test_generate_runs_any_model_the_shell_user_names(model: Path, tmp_path: Path):
    """The allowlist is for Discord members: the model is in neither IMAGINEBOT_MODEL(S)."""
    out = tmp_path / "shots"
    result = imaginebot("generate", "a red circle", "--model", str(model), "--steps", "1",
                        "--count", "1", "--device", "cpu", "--out", str(out), "--json",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [Path(image["path"]) for image in report["images"]] == [out / "0.png"]
    assert Image.open(out / "0.png").size == (32, 32)  # the tiny model's size, not the demo's


@pytest.mark.parametrize("args", [
    ["generate", ""],
    ["generate", "x", "--steps", "0"],
    ["generate", "x", "--sampler", "nope"],
    ["generate", "x", "--width", "9000", "--height", "9000"],
    ["generate", "x", "--model", "not/allowed"],
    ["make-test-model", "--family", "sd9", "nowhere"],
])
def test_bad_input_exits_2_with_one_line(model: Path, tmp_path: Path, args: list[str]):
    result = imaginebot(*args, cwd=tmp_path, model=model)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imaginebot: "), result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "outputs").exists()
