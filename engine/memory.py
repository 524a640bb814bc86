"""Whether a model can fit the GPU at all, known from its files before loading it.

A model whose weights alone are larger than the GPU fails every request whatever its size, so
it gets its own sentence instead of an out-of-memory error that tells the member to try a
smaller size or fewer images. The estimate reads only safetensors headers and file sizes.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from pathlib import Path

import torch

from engine.errors import RequestError
from engine.families import ModelInfo, hub_folder

log = logging.getLogger(__name__)

GIB = 1024**3
#: safetensors dtypes of floating weights, which diffusers loads in the pipeline's dtype.
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


def safetensors_bytes(path: Path, dtype: torch.dtype) -> int:
    """The bytes a .safetensors file's tensors take once loaded, floats cast to ``dtype``."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    size = torch.empty((), dtype=dtype).element_size()
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] in FLOAT_DTYPES:
            total += math.prod(entry["shape"]) * size
        else:
            start, end = entry["data_offsets"]
            total += end - start
    return total


def _weight_files(folder: Path) -> list[Path]:
    """What ``from_pretrained`` loads from a component folder without a variant: the plain
    ``*.safetensors`` files and shards (``model.fp16.safetensors`` is a variant)."""
    plain = [path for path in sorted(folder.glob("*.safetensors"))
             if len(path.name.split(".")) == 2]
    return plain or [path for path in sorted(folder.glob("*.bin"))
                     if len(path.name.split(".")) == 2]


def weights_bytes(info: ModelInfo, dtype: torch.dtype) -> int:
    """About how many bytes the model's weights take loaded in ``dtype``.

    A lower bound where files do not say: a pickled ``.bin`` counts as float32 cast to
    ``dtype``, and a single-file checkpoint counts only its own file.
    """
    path = Path(info.ref)
    if path.is_file():
        return safetensors_bytes(path, dtype)
    folder = path if path.is_dir() else hub_folder(info.ref)
    if folder is None:
        return 0
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return 0
    size = torch.empty((), dtype=dtype).element_size()
    total = 0
    for component, entry in index.items():
        if component.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        for file in _weight_files(folder / component):
            if file.suffix == ".safetensors":
                total += safetensors_bytes(file, dtype)
            else:
                total += file.stat().st_size * size // 4
    return total


def check_fits(info: ModelInfo, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse a model whose weights are larger than the whole GPU; nothing off CUDA."""
    if device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    try:
        need = weights_bytes(info, dtype)
    except (OSError, ValueError, KeyError, struct.error) as error:
        # A damaged weights file: loading it says so (engine.loading), so it is not judged here
        log.warning("model %s: its size cannot be read (%s); loading it will tell", info.name,
                    error)
        return
    if need > total:
        name = str(dtype).removeprefix("torch.")
        raise RequestError("model", f"model {info.name} can never fit this GPU: its weights "
                           f"need about {need / GIB:.1f} GiB in {name} and the GPU has "
                           f"{total / GIB:.1f} GiB")
