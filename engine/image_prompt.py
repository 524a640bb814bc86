"""Image prompts (img2img): decoding what a user sends safely, and keeping it with the job.

The bytes come from strangers, so they are decoded with Pillow's decompression-bomb limit (its
warning counts as a refusal too) and only as PNG, JPEG or WebP. The image is turned upright
(EXIF), made RGB (transparency over white), and resized and centre-cropped to the request's
size. It is stored once, as a PNG named by its sha256 under ``output_dir/sources``; the request
carries only that hash (``GenerationRequest.source_image``), which the worker checks when it
reads the file, so /show, U and V of any job made from it remake the same image. Light: the
bot (fetching attachments) and the CLI (``--image``) use it; the worker reads with
:func:`load_source`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import RequestError

FORMATS = ("PNG", "JPEG", "WEBP")
SOURCES_DIR = "sources"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


def check_size(size: int, limit: int) -> None:
    """Refuse an image of ``size`` bytes over ``limit`` before (and after) reading it."""
    if size > limit:
        raise RequestError("image", f"the image is {_megabytes(size)}; image prompts may be "
                           f"at most {_megabytes(limit)}")


def decode(data: bytes, limit: int) -> Image.Image:
    """The image in ``data``, loaded; RequestError if it is not one we read safely."""
    check_size(len(data), limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                image.load()
                return ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError("image", "the image has too many pixels to decode safely") from None
    except UnidentifiedImageError:
        raise RequestError("image", "the image prompt must be a PNG, JPEG or WebP "
                           "image") from None
    except (OSError, ValueError, SyntaxError):  # truncated or corrupt data
        raise RequestError("image", "the image prompt is damaged and cannot be read") from None


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """RGB at exactly ``width`` x ``height``: scaled to cover it, then centre-cropped."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    return ImageOps.fit(image.convert("RGB"), (width, height), Image.Resampling.LANCZOS)


def source_path(output_dir: Path, digest: str) -> Path:
    if _SHA256.fullmatch(digest) is None:
        raise RequestError("source_image", "the image prompt's hash is not a sha256 digest")
    return output_dir / SOURCES_DIR / f"{digest}.png"


def store(image: Image.Image, output_dir: Path) -> str:
    """Save ``image`` as a PNG named by its sha256 (once); returns the digest."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path = source_path(output_dir, digest)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(path)
    return digest


def prepare(data: bytes, width: int, height: int, output_dir: Path, limit: int) -> str:
    """Decode, fit and store an image prompt; the digest for ``source_image``."""
    return store(fit(decode(data, limit), width, height), output_dir)


def load_source(output_dir: Path, digest: str) -> Image.Image:
    """The stored image prompt, checked against its digest; RequestError when it is gone."""
    path = source_path(output_dir, digest)
    try:
        data = path.read_bytes()
    except OSError:
        raise RequestError("image", "the image prompt of this job is no longer on the "
                           "server") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise RequestError("image", "the image prompt of this job was changed on the server")
    with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
        return image.convert("RGB")
