"""``imaginebot worker`` processes for the scale-out tests, which kill, stop and restart them.

:class:`WorkerProcess` runs one worker in a subprocess, as an owner runs one per GPU, with the
test's short lease and heartbeat. By default it is the real command (``python -m bot.cli
worker``, the built-in plugins' operations included); with ``operation_modules`` it is this
module's own entry point instead, which runs the same ``worker_command`` with the given
operation modules (tests.support.engine_ops, say, whose txt2img crashes the GPU process on
CRASH_PROMPT) and no plugins, so that it starts sooner::

    python -m tests.support.workers --operation-module tests.support.engine_ops \\
        --queue redis://... --name w1 --device cpu --models /path/to/model
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import redis

from engine.remote.protocol import Keys

#: The lease and heartbeat of every scale-out test: a lost job is noticed within seconds.
LEASE_SECONDS = 2.0
HEARTBEAT_SECONDS = 0.5
#: Seconds a worker gets to register (torch imports, GPU process start, on a busy 2-core CI).
START_SECONDS = 120.0


async def until(condition: Callable[[], bool], timeout: float = START_SECONDS) -> None:  # noqa: ASYNC109
    """Until ``condition()`` holds: what the tests wait for (a worker counted online, say) is
    state that another process or an engine's own task changes, with no event to await."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def worker_environment(prefix: str, **extra: str) -> dict[str, str]:
    """This process's environment without its IMAGINEBOT_* settings, plus the test's."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("IMAGINEBOT_") or name.startswith("IMAGINEBOT_TEST_")}
    return env | {"IMAGINEBOT_REDIS_PREFIX": prefix,
                  "IMAGINEBOT_LEASE_SECONDS": str(LEASE_SECONDS),
                  "IMAGINEBOT_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
                  "IMAGINEBOT_DTYPE": "float32", "IMAGINEBOT_PREVIEW_EVERY": "1",
                  "IMAGINEBOT_MAX_STEPS": "500", "OMP_NUM_THREADS": "1"} | extra


class WorkerProcess:
    """One worker subprocess named ``name``, its output in ``log``."""

    def __init__(self, url: str, name: str, model: Path, log: Path, *, prefix: str,
                 operation_modules: Sequence[str] = (), max_batch: int = 4,
                 env: Mapping[str, str] | None = None) -> None:
        self.url, self.name, self.log, self.prefix = url, name, log, prefix
        entry = (["-m", "tests.support.workers",
                  *(f"--operation-module={module}" for module in operation_modules)]
                 if operation_modules else ["-m", "bot.cli", "worker"])
        self.command = [sys.executable, *entry, "--queue", url, "--name", name,
                        "--device", "cpu", "--models", str(model), "--max-batch", str(max_batch)]
        self.env = worker_environment(prefix, **(env or {}))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> WorkerProcess:
        assert self.process is None or self.process.poll() is not None
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        return self

    def wait_registered(self, timeout: float = START_SECONDS) -> None:
        """Until the worker's heartbeat key exists (it then offers a slot)."""
        client = redis.Redis.from_url(self.url)
        key = Keys(self.prefix).heartbeat(self.name)
        deadline = time.monotonic() + timeout
        try:
            while not client.exists(key):
                assert self.process is not None
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"worker {self.name} did not register:\n{self.tail()}")
                time.sleep(0.1)
        finally:
            client.close()

    def signal(self, signum: int) -> None:
        """SIGKILL, SIGSTOP, SIGCONT or SIGTERM to the agent (its GPU process is its child)."""
        assert self.process is not None
        self.process.send_signal(signum)
        if signum == signal.SIGKILL:
            self.process.wait()

    def close(self) -> None:
        """Kill it if it still runs (continued first, in case it was stopped)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()

    def tail(self, characters: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-characters:] if self.log.exists() else ""


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    from engine.remote.cli import add_worker_arguments, worker_command

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from engine.settings import EngineSettings

    parser = argparse.ArgumentParser(prog="tests.support.workers")
    add_worker_arguments(parser)
    parser.add_argument("--operation-module", action="append", default=[])
    args = parser.parse_args(argv)
    return worker_command(args, EngineSettings(), args.operation_module)


if __name__ == "__main__":
    raise SystemExit(main())
