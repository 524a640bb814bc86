"""An engine operation module that stops its own process when imported: a worker that hangs
during start-up, before it is ready (the stall watchdog's start-up test)."""

from __future__ import annotations

import os
import signal

os.kill(os.getpid(), signal.SIGSTOP)
