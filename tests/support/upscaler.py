"""A tiny random-weight ESRGAN (RRDBNet) saved like a real upscaler checkpoint.

Built with spandrel's own architecture class and loaded back through
``spandrel.ModelLoader().load_from_file``, the path a Real-ESRGAN download takes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def make_test_upscaler(path: Path, scale: int = 4) -> Path:
    """Write a seeded ESRGAN with 8 filters and one block to ``path`` (.safetensors or .pth)."""
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    state = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def test_upscaler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4x test upscaler as .safetensors, built once per run."""
    return make_test_upscaler(tmp_path_factory.mktemp("upscaler") / "tiny-esrgan.safetensors")
