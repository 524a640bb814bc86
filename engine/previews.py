"""Cheap step previews: a linear latent -> RGB map of the predicted clean image, no VAE decode.

Factors (latent channel -> R, G, B weights, plus a bias) are ComfyUI's published
``latent_rgb_factors`` / ``latent_rgb_factors_bias`` from comfy/latent_formats.py
(https://github.com/comfyanonymous/ComfyUI/blob/master/comfy/latent_formats.py, classes SD15,
SDXL, SD3 and Flux). They apply to latents in the space diffusers samples in (VAE latents
scaled, and shifted for SD3/FLUX), which is also the space ComfyUI samples in. As in ComfyUI,
the result lies roughly in [-1, 1] and is mapped to [0, 255].

Nothing here makes the GPU thread wait: the step callback only starts a copy of x0 to host
memory (:class:`HostLatents`) and hands out :class:`Preview` objects; whoever shows a preview
renders it (:meth:`Preview.image`), on its own thread (the worker's outbox).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

_SD15 = ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
          [-0.2120, -0.2616, -0.7177]], [0.0, 0.0, 0.0])
_SDXL = ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
          [-0.3165, -0.2492, -0.2188]], [0.1084, -0.0175, -0.0011])
_SD3 = ([[-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458],
         [0.0856, 0.0339, 0.0902], [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309],
         [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358], [-0.0194, 0.0020, 0.0669],
         [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
         [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293],
         [-0.1448, -0.1463, -0.1189]], [0.2394, 0.2135, 0.1925])
_FLUX = ([[-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
          [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
          [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
          [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
          [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
          [-0.1262, -0.0982, -0.0778]], [-0.0329, -0.0718, -0.0851])

LATENT_RGB: dict[str, tuple[list[list[float]], list[float]]] = {
    "sd15": _SD15, "sd2": _SD15, "sdxl": _SDXL, "sdxl-turbo": _SDXL,
    "sd3": _SD3, "flux": _FLUX, "flux-schnell": _FLUX,
}

#: Largest preview edge in pixels; previews travel to Discord often, so they stay small.
PREVIEW_EDGE = 256


def latents_to_rgb(latents: torch.Tensor, family: str) -> torch.Tensor:
    """(N, C, h, w) latents -> (N, 3, h, w) RGB in [0, 1].

    Latents whose channel count matches no table (tiny test models) show their first three
    channels (repeated if fewer), which keeps previews working for any model.
    """
    x = latents.detach().float().cpu()
    table = LATENT_RGB.get(family)
    if table is not None and len(table[0]) == x.shape[1]:
        weights = torch.tensor(table[0]).T  # (3, C)
        rgb = torch.nn.functional.linear(x.movedim(1, -1), weights, torch.tensor(table[1]))
        rgb = rgb.movedim(-1, 1)
    else:
        rgb = x[:, [i % x.shape[1] for i in range(3)]]
    return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)


def preview_image(x0: torch.Tensor, family: str, columns: int = 2) -> Image.Image:
    """One small image of the x0 predictions of a batch, tiled ``columns`` wide."""
    rgb = latents_to_rgb(x0, family)
    n, _, h, w = rgb.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    sheet = torch.zeros(3, rows * h, cols * w)
    for i in range(n):
        r, c = divmod(i, cols)
        sheet[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = rgb[i]
    array = (sheet.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(array)
    scale = min(8, max(1, PREVIEW_EDGE // max(image.size)))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


class HostLatents:
    """A step's x0 on its way to host memory, copied without the GPU thread waiting for it.

    On CUDA the copy goes into pinned memory with ``non_blocking=True`` (a pageable destination
    would make the copy wait for every kernel queued before it) and an event marks its end, on
    which :meth:`get` waits, on the thread that renders. Elsewhere it is a plain copy: CPU
    tensors are ready at once, and MPS has no pinned memory.
    """

    def __init__(self, latents: torch.Tensor) -> None:
        on_cuda = latents.device.type == "cuda"
        self._host = torch.empty(latents.shape, dtype=latents.dtype, pin_memory=on_cuda)
        self._host.copy_(latents.detach(), non_blocking=on_cuda)
        self._copied: torch.cuda.Event | None = None
        if on_cuda:
            self._copied = torch.cuda.Event()
            self._copied.record()

    def get(self) -> torch.Tensor:
        """The latents on the host, once the copy has finished."""
        if self._copied is not None:
            self._copied.synchronize()
        return self._host


@dataclass(frozen=True)
class Preview:
    """One request's images ``start:stop`` of a step's x0, rendered when shown (:meth:`image`)."""

    latents: HostLatents
    start: int
    stop: int
    family: str

    def image(self) -> Image.Image:
        """The preview sheet (:func:`preview_image`); waits for the copy to the host."""
        return preview_image(self.latents.get()[self.start:self.stop], self.family)
