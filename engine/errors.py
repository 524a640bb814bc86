"""The engine's exceptions, in a leaf module that imports nothing from the project.

Any engine module can raise or catch these without importing another engine module, so no
import cycle needs a function-local import to hide it. The public modules re-export the ones
plugins and the bot use: ``engine.request.RequestError`` and ``engine.operations.JobCancelled``.
"""

from __future__ import annotations


class RequestError(ValueError):
    """A bad request value; ``str()`` is one sentence a user can act on."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class JobCancelled(Exception):
    """Raised between steps when a job is cancelled; nothing is decoded."""


class EngineStartError(RuntimeError):
    """The worker could not start (bad settings, a broken operation module, no device)."""
