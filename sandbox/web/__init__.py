"""The playground's web page: a Discord-like channel view over the emulator."""

from sandbox.web.server import PlaygroundServer
from sandbox.web.views import Person

__all__ = ["Person", "PlaygroundServer"]
