"""A zoom job's params: what the bot records when a button is clicked and the worker paints.

Everything that decides the pixels is in the request (the job's record), so the result can be
made again from it: the move and its factor, the box the source image goes into (the mask is
everything outside it), the source image's path and the sha256 of its PNG, and the
inpainting model when one was configured. The worker refuses a source whose bytes have
changed instead of painting around a different picture.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from engine.request import GenerationRequest, RequestError
from plugins.zoom import DIRECTIONS, PAN_FACTOR, ZOOM_FACTORS, Direction
from plugins.zoom.geometry import Box, Plan

_SHA256 = re.compile(r"[0-9a-f]{64}")


def digest(data: bytes) -> str:
    """The hash a zoom records of its source image: the sha256 of the PNG file's bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Move:
    """Zoom Out or a pan of one image, as recorded in ``GenerationRequest.params``."""

    direction: Direction
    #: The canvas over the image along the moved axes (both for "out").
    factor: float
    image_path: str
    image_sha256: str
    #: Where the image goes in the output (request.width x request.height).
    box: Box
    #: The configured inpainting model the zoom runs on; None: the image's own model.
    inpaint_model: str | None = None

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"direction": self.direction, "factor": self.factor,
                                  "image_path": self.image_path,
                                  "image_sha256": self.image_sha256, "box": list(self.box)}
        if self.inpaint_model is not None:
            params["inpaint_model"] = self.inpaint_model
        return params

    def plan(self, request: GenerationRequest) -> Plan:
        assert request.width and request.height  # validated requests have them
        return Plan((request.width, request.height), self.box)

    @classmethod
    def of(cls, request: GenerationRequest) -> Move:
        """The move of a zoom request; a RequestError naming the first bad value."""
        params = request.params
        direction = params.get("direction")
        if direction not in DIRECTIONS:
            raise RequestError("direction", f"zoom direction must be one of "
                               f"{', '.join(DIRECTIONS)}")
        factors = ZOOM_FACTORS if direction == "out" else (PAN_FACTOR,)
        factor = params.get("factor")
        if not isinstance(factor, int | float) or isinstance(factor, bool) \
                or factor not in factors:
            raise RequestError("factor", f"zoom factor must be one of "
                               f"{', '.join(f'{f:g}' for f in factors)} here")
        path, sha = params.get("image_path"), params.get("image_sha256")
        if not isinstance(path, str) or not path:
            raise RequestError("image_path", "a zoom needs the path of its source image")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise RequestError("image_sha256", "a zoom needs the sha256 of its source image")
        model = params.get("inpaint_model")
        if model is not None and not isinstance(model, str):
            raise RequestError("inpaint_model", "zoom inpaint_model must be a model reference")
        return cls(direction, float(factor), path, sha, _box(params.get("box"), request), model)


def _box(value: object, request: GenerationRequest) -> Box:
    assert request.width and request.height  # validated requests have them
    if (isinstance(value, list | tuple) and len(value) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        left, top, right, bottom = value
        if 0 <= left < right <= request.width and 0 <= top < bottom <= request.height:
            return left, top, right, bottom
    raise RequestError("box", f"zoom box must be [left, top, right, bottom] inside the "
                       f"{request.width}x{request.height} output")
