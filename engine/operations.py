"""Registry of engine operations: named functions that run inside the worker process, on the GPU.

Plugins register operations in modules the worker imports at start (``EngineClient``'s
``operation_modules``), so the bot process never loads torch for them. Importing this module
stays cheap for the same reason: torch and the runner are only touched when an operation runs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

# Re-exported: operations raise it (through check_cancelled), and plugins catch it from here.
from engine.errors import JobCancelled as JobCancelled

# Re-exported: plugins declare their settings with it, and operations read theirs through
# OperationContext.plugin_settings.
from engine.plugin_settings import PluginSettings as PluginSettings
from engine.plugin_settings import settings_of

if TYPE_CHECKING:
    from PIL.Image import Image

    from engine.previews import Preview
    from engine.request import GenerationRequest
    from engine.runner import Runner
    from engine.settings import EngineSettings

#: ``progress(step, total, preview)``; one call per step, the preview is optional (the
#: runner's, passed on: engine.previews.Preview, rendered by the worker off the GPU thread).
ProgressFn = Callable[[int, int, "Preview | None"], None]
#: Returns True once the job has been cancelled; checked between steps.
CancelFn = Callable[[], bool]
OperationFn = Callable[["OperationContext", "GenerationRequest"], "list[Image]"]

_OPERATIONS: dict[str, OperationFn] = {}
S = TypeVar("S", bound=PluginSettings)


@dataclass(frozen=True)
class OperationContext:
    """What an operation may use inside the worker: the warm runner and the job's callbacks."""

    runner: Runner
    progress: ProgressFn
    cancelled: CancelFn

    @property
    def settings(self) -> EngineSettings:
        return self.runner.settings

    @property
    def device(self) -> Any:
        return self.runner.device

    @property
    def dtype(self) -> Any:
        return self.runner.dtype

    def plugin_settings(self, cls: type[S]) -> S:
        """A plugin's settings (``IMAGINEBOT_<NAMESPACE>_*``), read once per worker."""
        return settings_of(self.runner, cls)

    def pipeline(self, model_ref: str) -> Any:
        """The LRU-cached diffusers pipeline, so operations share loaded weights with txt2img."""
        return self.runner.pipeline(model_ref)

    def scheduler(self, model_ref: str, sampler: str | None) -> Any:
        """A new scheduler for ``sampler`` (None: the model's default), made the way txt2img
        makes its own: from the model's own scheduler config, never one an earlier job swapped
        in. For pipelines an operation builds from the loaded components (``from_pipe``)."""
        return self.runner._scheduler(self.runner.model(model_ref), sampler)

    def prompt_kwargs(self, model_ref: str, pipe: Any,
                      request: GenerationRequest) -> dict[str, Any]:
        """The prompt arguments of ``pipe`` (made from ``model_ref``'s loaded components) for
        ``request``, as txt2img passes them: its LoRAs set and embeddings loaded, weighted and
        long prompts encoded, LoRA tags taken out (engine.prompting)."""
        return self.runner.prompt_kwargs(self.runner.model(model_ref), pipe, request)

    def reference_kernels(self, model_ref: str) -> AbstractContextManager[None]:
        """While open, ``model_ref``'s loaded pipeline runs plain diffusers' kernels: the
        reference tier, bitwise plain diffusers at the same dtype and batch, for an image made
        again. The tuned kernels come back when it closes; FP8 weights (the lossy tier) stay.
        See engine.speed.reference_kernels."""
        from engine.speed import reference_kernels  # torch: only inside the worker

        return reference_kernels(self.runner.pipeline(model_ref))

    def check_cancelled(self) -> None:
        """Raise ``JobCancelled`` if the user cancelled; call it between expensive steps."""
        if self.cancelled():
            raise JobCancelled()


def operation(name: str) -> Callable[[OperationFn], OperationFn]:
    """Register ``fn(ctx, request) -> list[Image]`` under ``name``."""

    def register(fn: OperationFn) -> OperationFn:
        existing = _OPERATIONS.get(name)
        # The same module imported twice (e.g. as a script and as a module) may re-register.
        if existing is not None and _qualified(existing) != _qualified(fn):
            raise ValueError(f"engine operation {name!r} is already registered by "
                             f"{_qualified(existing)}")
        _OPERATIONS[name] = fn
        return fn

    return register


def get_operation(name: str) -> OperationFn:
    try:
        return _OPERATIONS[name]
    except KeyError:
        raise KeyError(f"no engine operation named {name!r}") from None


def operation_names() -> frozenset[str]:
    return frozenset(_OPERATIONS)


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


@operation("txt2img")
def txt2img(ctx: OperationContext, request: GenerationRequest) -> list[Image]:
    """Built-in text-to-image for one request; the worker batches txt2img itself."""
    return ctx.runner.txt2img([request], ctx.progress, ctx.cancelled)[0].images
