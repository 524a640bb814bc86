"""Interaction latency: N concurrent /imagine through the emulator while the engine works.

Discord drops an interaction that is not answered within 3 s, so what matters is the time from
INTERACTION_CREATE to the deferral callback (as the emulator saw it) while everything else is
busy. A ticker task sleeping 5 ms at a time measures how late the event loop wakes it (loop lag)
from the first /imagine until the last result has been delivered, and for 5 s before with
nothing to do (the machine's own noise); the longest garbage-collector pause is reported too.

    .venv/bin/python -m bench.interactions [--requests 50] [--steps 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sandbox import DiscordEmulator
from tests.support.bot import running_bot, wait_for_result

TICK = 0.005
IDLE_SECONDS = 5.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class GcPauses:
    """Longest garbage-collector pause, to tell GC stalls from a busy machine."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._started)


async def ticker(lags: list[float], stop: asyncio.Event) -> None:
    """Sleep TICK at a time and record how much later than asked the loop woke us."""
    while not stop.is_set():
        asked = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append(time.perf_counter() - asked - TICK)


async def measure(requests: int, steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = root / "model"
        # In a child process: torch in the bot's own process would skew the loop measurements.
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "make-test-model", "--family", "sd15", str(model),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        if await child.wait() != 0:
            raise RuntimeError("could not build the test model")
        async with DiscordEmulator() as emulator, running_bot(
                root, emulator, model=str(model), queue_per_user=requests,
                queue_global=requests, max_batch=8) as bot:
            warm = await emulator.slash(emulator.add_user(name="warm-up"), "imagine",
                                        {"prompt": "warm-up", "steps": steps})
            await wait_for_result(emulator, warm, timeout=300)
            emulator.interactions.clear()

            users = [emulator.add_user(name=f"user{i}") for i in range(requests)]
            idle: list[float] = []
            stop = asyncio.Event()
            tick = asyncio.create_task(ticker(idle, stop))
            await asyncio.sleep(IDLE_SECONDS)  # the machine's own noise, for comparison
            stop.set()
            await tick

            lags: list[float] = []
            stop = asyncio.Event()
            pauses = GcPauses()
            gc.callbacks.append(pauses)
            tick = asyncio.create_task(ticker(lags, stop))
            started = time.perf_counter()
            records = await asyncio.gather(*(
                emulator.slash(user, "imagine", {"prompt": f"a red cat {i}", "steps": steps})
                for i, user in enumerate(users)))
            await asyncio.gather(*(record.wait_for_response(timeout=10) for record in records))
            await asyncio.gather(*(wait_for_result(emulator, record, timeout=600)
                                   for record in records))
            elapsed = time.perf_counter() - started
            stop.set()
            await tick
            gc.callbacks.remove(pauses)
            latencies = [r.response_latency for r in records if r.response_latency is not None]
            await asyncio.sleep(1)  # the last rows are marked delivered just after their edit
            owners = {user.id for user in users}
            delivered = sum(1 for job in await bot.jobs.list_jobs(limit=requests + 1)
                            if job.owner_id in owners and job.state == "delivered")
    return {
        "requests": requests, "steps": steps, "answered": len(latencies),
        "delivered_jobs": delivered,
        "defer_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "defer_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "defer_max_ms": round(max(latencies) * 1000, 1),
        "loop_lag_p99_ms": round(percentile(lags, 99) * 1000, 1),
        "loop_lag_max_ms": round(max(lags) * 1000, 1),
        "loop_ticks": len(lags), "gc_pause_max_ms": round(pauses.longest * 1000, 1),
        "idle_lag_p99_ms": round(percentile(idle, 99) * 1000, 1),
        "idle_lag_max_ms": round(max(idle) * 1000, 1),
        "all_delivered_s": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests, args.steps))
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>18}: {value}")


if __name__ == "__main__":
    main()
