"""A watchdog that says what blocked the event loop, while it is blocked.

A coroutine cannot see what blocks the loop: it runs only after the block has ended, when the
culprit is gone from the stack. So the loop only stamps a heartbeat (one ``call_later`` every
``interval`` seconds), and a daemon thread reads the stamp. When the next beat is more than
``threshold`` seconds overdue, the thread logs one WARNING with the loop thread's stack as it is
at that moment (``sys._current_frames``) and the task that is running, and one more when the
loop beats again, with the stall's total length. ``stalls`` counts them, for metrics.

A late beat means either that the loop was blocked (the stack names the blocking call) or that
the process got no CPU (the stack shows the loop idle in ``select``, or code that was merely
slow). The thread needs the GIL to look: a C call that holds the GIL throughout (rare; I/O,
Pillow and hashing release it) is reported only when it has returned, with the stack after it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger(__name__)

#: Seconds a heartbeat may be overdue before the loop counts as stalled.
STALL_THRESHOLD = 1.0
#: Seconds between two heartbeats, and between two looks by the watchdog thread.
BEAT_INTERVAL = 0.25


class LoopWatch:
    """Start on the loop to watch (``start()``), stop on it (``stop()``); both idempotent."""

    def __init__(self, threshold: float = STALL_THRESHOLD, *,
                 interval: float = BEAT_INTERVAL) -> None:
        self.threshold = threshold
        self.interval = interval
        #: Stalls seen since start (each counted once, when it passed the threshold).
        self.stalls = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._stamp = 0.0
        self._beat_handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: The last stamp before the stall being reported; None while the loop keeps up.
        self._stalled_since: float | None = None

    def start(self) -> None:
        """Watch the running loop (call from a coroutine or callback on it)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        self._stalled_since = None
        self._beat()
        self._thread = threading.Thread(target=self._watch, name="loop-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and watching; returns once the thread has ended (at once)."""
        if self._beat_handle is not None:
            self._beat_handle.cancel()
            self._beat_handle = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _beat(self) -> None:
        assert self._loop is not None
        self._stamp = time.monotonic()
        self._beat_handle = self._loop.call_later(self.interval, self._beat)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._check(time.monotonic())

    def _check(self, now: float) -> None:
        stamp = self._stamp
        if self._stalled_since is None:
            late = now - stamp - self.interval
            if late > self.threshold:
                self._stalled_since = stamp
                self.stalls += 1
                log.warning("event loop stalled: %.1f s late so far; the loop is running %s\n"
                            "Loop thread stack (most recent call last):\n%s",
                            late, self._current_task(), self._loop_stack())
        elif stamp != self._stalled_since:
            total = stamp - self._stalled_since - self.interval
            self._stalled_since = None
            log.warning("event loop recovered after a %.1f s stall", total)

    def _current_task(self) -> str:
        assert self._loop is not None
        # Reading another thread's current task is a dict lookup; it may be one step stale.
        task = asyncio.current_task(self._loop)
        return f"task {task.get_name()!r}" if task is not None else "a callback, not a task"

    def _loop_stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "  (the loop thread has ended)\n"
        return "".join(traceback.format_stack(frame))
