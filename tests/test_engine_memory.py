"""A model that can never fit the GPU is refused before loading, in one sentence with sizes."""

from __future__ import annotations

import shutil
import struct
from types import SimpleNamespace

import pytest
import torch

from engine.errors import RequestError
from engine.families import model_info
from engine.loading import load_pipeline
from engine.memory import GIB, check_fits, weights_bytes
from engine.runner import Runner
from engine.settings import EngineSettings
from engine.testmodels import save_single_file

CUDA = torch.device("cuda")


def _gpu_with(monkeypatch, total: int) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(total_memory=total))


def _loaded_bytes(pipeline) -> int:
    """What the loaded pipeline's weights really take."""
    total = 0
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                total += tensor.numel() * tensor.element_size()
    return total


@pytest.mark.parametrize(("family", "dtype"), [("sd15", torch.float32),
                                               ("flux", torch.bfloat16)])
def test_the_estimate_is_what_the_loaded_weights_take(tiny_model, family, dtype):
    settings = EngineSettings(model=str(tiny_model(family)), device="cpu")
    info = model_info(settings.model, settings)
    real = _loaded_bytes(load_pipeline(info, torch.device("cpu"), dtype).pipeline)
    assert abs(weights_bytes(info, dtype) - real) <= 0.05 * real


def test_a_single_file_counts_its_tensors(tiny_model, tmp_path):
    settings = EngineSettings(model=str(tiny_model("sd15")), device="cpu")
    path = save_single_file(tiny_model("sd15"), tmp_path / "tiny.safetensors")
    info = model_info(str(path), settings)
    folder = model_info(settings.model, settings)
    # the single file holds the UNet, the VAE and the text encoder, as the folder does
    assert weights_bytes(info, torch.float16) == pytest.approx(
        weights_bytes(folder, torch.float16), rel=0.05)
    assert weights_bytes(info, torch.float16) * 2 == pytest.approx(
        weights_bytes(info, torch.float32), rel=0.01)


def test_a_model_larger_than_the_gpu_is_refused_with_both_sizes(tiny_model, monkeypatch):
    settings = EngineSettings(model=str(tiny_model("sd15")), device="cpu")
    info = model_info(settings.model, settings)
    need = weights_bytes(info, torch.float16)
    _gpu_with(monkeypatch, need - 1)
    with pytest.raises(RequestError, match=r"model tiny-sd15 can never fit this GPU: its "
                       r"weights need about 0\.0 GiB in float16 and the GPU has 0\.0 GiB"):
        check_fits(info, CUDA, torch.float16)
    _gpu_with(monkeypatch, need)
    check_fits(info, CUDA, torch.float16)
    assert GIB == 2**30


def test_nothing_is_checked_off_cuda(tiny_model, monkeypatch):
    settings = EngineSettings(model=str(tiny_model("sd15")), device="cpu")
    _gpu_with(monkeypatch, 0)
    check_fits(model_info(settings.model, settings), torch.device("cpu"), torch.float32)


def test_the_runner_refuses_before_loading(tiny_model, monkeypatch):
    settings = EngineSettings(model=str(tiny_model("sd15")), device="cpu")
    runner = Runner(settings)
    runner.device = CUDA
    _gpu_with(monkeypatch, 1024)
    monkeypatch.setattr("engine.runner.load_pipeline", lambda *args: pytest.fail("loaded"))
    with pytest.raises(RequestError, match="can never fit this GPU"):
        runner.model(settings.model)
    assert runner.loaded_models == []


def test_a_damaged_weights_file_is_left_to_the_loader_to_refuse(tiny_model, monkeypatch,
                                                                 tmp_path):
    """A size that cannot be read is no verdict: the load that follows says the model is
    damaged, in the loader's own sentence, rather than an error escaping the size check."""
    folder = shutil.copytree(tiny_model("sd15"), tmp_path / "damaged")
    (weights,) = (folder / "unet").glob("*.safetensors")
    weights.write_bytes(b"\xff" * 4)
    settings = EngineSettings(model=str(folder), device="cpu")
    info = model_info(settings.model, settings)
    with pytest.raises(struct.error):
        weights_bytes(info, torch.float16)
    _gpu_with(monkeypatch, 1024)
    check_fits(info, CUDA, torch.float16)
    runner = Runner(settings)
    runner.device = CUDA
    with pytest.raises(RequestError) as refused:
        runner.model(settings.model)
    assert str(refused.value) == "model tiny-sd15 could not be loaded; the engine's log says why"
