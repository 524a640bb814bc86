"""Make a result fit the channel's upload limit: re-encode first, shrink only if that fails."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

#: Encodings tried in order once the PNG is too large (format, quality).
ENCODINGS = (("WEBP", 90), ("WEBP", 75), ("JPEG", 90), ("JPEG", 75), ("WEBP", 50))
#: Each downscaling round keeps this fraction of the width and height.
SHRINK = 0.75
#: Below this edge a result is no longer worth posting.
MIN_EDGE = 32


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str
    #: What was done to fit, for the embed footer (empty when the original fits).
    note: str = ""


class TooLarge(Exception):
    """Even the smallest acceptable encoding exceeds the limit."""


def fit_upload(path: Path, limit: int, stem: str = "grid") -> Upload:
    """The file as is if it fits, else the best encoding (then size) under ``limit`` bytes.

    CPU-bound: call it through ``asyncio.to_thread``.
    """
    original = path.read_bytes()
    if len(original) <= limit:
        return Upload(original, f"{stem}{path.suffix}")
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    scale = 1.0
    while min(image.size) * scale >= MIN_EDGE:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        candidate = image if scale == 1.0 else image.resize(size, Image.Resampling.LANCZOS)
        for fmt, quality in ENCODINGS:
            buffer = io.BytesIO()
            candidate.save(buffer, fmt, quality=quality)
            if buffer.tell() <= limit:
                extension = "webp" if fmt == "WEBP" else "jpg"
                note = f"{fmt} q{quality}" + (f", {size[0]}x{size[1]}" if scale < 1 else "")
                return Upload(buffer.getvalue(), f"{stem}.{extension}", note)
        scale *= SHRINK
    raise TooLarge(f"the image does not fit in {limit} bytes")
