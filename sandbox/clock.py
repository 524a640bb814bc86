"""Time as the emulator sees it: real time plus an offset that tests can advance."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime

DISCORD_EPOCH_MS = 1420070400000


class EmulatorClock:
    """Real monotonic and wall time shifted by ``offset`` seconds.

    Deadlines (3 s first response, 15 min tokens, rate-limit windows) use ``monotonic()``, so a
    normal bot run sees real time while a test can jump ahead with ``advance()``.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset += seconds

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)


class Snowflakes:
    """Discord-style ids whose embedded timestamp is the (shifted) wall time of creation."""

    def __init__(self, clock: EmulatorClock) -> None:
        self._clock = clock
        self._counter = itertools.count()

    def at(self, when: datetime) -> int:
        millis = int(when.timestamp() * 1000) - DISCORD_EPOCH_MS
        return (millis << 22) | (1 << 17) | (next(self._counter) & 0xFFF)

    def next(self) -> int:
        return self.at(self._clock.now())


def iso(when: datetime) -> str:
    return when.isoformat()
