"""Scale-out: what the Redis engine adds to each job, and what more workers bring.

Three measurements, on one machine with a throwaway redis-server (``.ci/redis.sh``):

- the added milliseconds per job: the same near-empty job (one step of an operation that does
  nothing) one after another through ``LocalEngine`` and through ``RedisEngine`` with one
  ``imaginebot worker``, median of each;
- throughput with 1, 2 and 4 workers on an operation that sleeps (``test_slow_steps`` of
  tests/support/stall_ops.py), so that the CPU stays idle as on a GPU host: expect close to N×;
- a real-CPU ratio: the same txt2img jobs of the tiny benchmark model (bench.engine_overhead's)
  on 1 worker and on 2, one torch thread each; bounded by the machine's cores.

Jobs are dispatched as the bot's queue does: each free slot gets the next job.

    .venv/bin/python -m bench.scaleout [--jobs 16] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.engine_overhead import bench_model, make_request, print_result, use_threads
from engine.client import EngineClient
from engine.dispatch import Dispatch, Engine
from engine.events import Done, EngineEvent
from engine.local import LocalEngine
from engine.remote.engine import RedisEngine
from engine.request import GenerationRequest
from engine.settings import EngineSettings
from tests.support.workers import HEARTBEAT_SECONDS, LEASE_SECONDS, WorkerProcess, until

OPS = "tests.support.stall_ops"
SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "redis.sh"
#: One sleeping job: 5 steps of 0.1 s, as a GPU job keeps the worker busy and the CPU idle.
SLEEP_STEPS, SLEEP_PAUSE = 5, 0.1


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server for the run; its URL."""
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, check=True)
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    try:
        yield values["IMAGINEBOT_TEST_REDIS_URL"]
    finally:
        subprocess.run([str(SCRIPT), "stop", values["IMAGINEBOT_TEST_REDIS_DIR"]], check=False)


def sleeping(index: int, pause: float = SLEEP_PAUSE, steps: int = SLEEP_STEPS
             ) -> GenerationRequest:
    return GenerationRequest(prompt=f"sleep {index}", operation="test_slow_steps", width=64,
                             height=64, count=1, params={"steps": steps, "pause": pause})


async def _last(stream: AsyncIterator[EngineEvent]) -> EngineEvent:
    events = [event async for event in stream]
    return events[-1]


async def run_jobs(engine: Engine, requests: list[GenerationRequest]) -> float:
    """Seconds to run every request, each on the next free slot (as the bot's queue does)."""
    started = time.perf_counter()
    runs = []
    for request in requests:
        slot = await engine.acquire_slot()
        (stream,) = engine.submit([Dispatch(engine.validate(request), 1)], slot)
        runs.append(asyncio.create_task(_last(stream)))
    ends = await asyncio.gather(*runs)
    elapsed = time.perf_counter() - started
    failed = [end for end in ends if not isinstance(end, Done)]
    if failed:
        raise RuntimeError(f"a benchmark job failed: {failed[0]}")
    return elapsed


async def per_job(engine: Engine, jobs: int) -> list[float]:
    """Seconds of each of ``jobs`` near-empty jobs, one after another."""
    return [await run_jobs(engine, [sleeping(i, pause=0, steps=1)]) for i in range(jobs)]


class Workers:
    """The run's worker processes, added one by one."""

    def __init__(self, url: str, model: Path, folder: Path, prefix: str) -> None:
        self.url, self.model, self.folder, self.prefix = url, model, folder, prefix
        self.running: list[WorkerProcess] = []

    async def grow(self, engine: RedisEngine, count: int) -> None:
        """Start workers until ``count`` run, then give each one warm-up job (model load)."""
        new = [WorkerProcess(self.url, f"bench{index}", self.model,
                             self.folder / f"bench{index}.log", prefix=self.prefix,
                             operation_modules=[OPS], max_batch=1).start()
               for index in range(len(self.running), count)]
        self.running += new
        for worker in new:
            await asyncio.to_thread(worker.wait_registered)
        await until(lambda: engine.catalogue().workers_online == count)
        await run_jobs(engine, [make_request(index, count=1) for index in range(count)])

    def close(self) -> None:
        for worker in self.running:
            worker.close()


async def measure(jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, redis_server() as url:
        folder = Path(tmp)
        model = bench_model(folder / "model")
        settings = EngineSettings(model=str(model), device="cpu", dtype="float32",
                                  output_dir=folder / "outputs", max_batch=1,
                                  lease_seconds=LEASE_SECONDS,
                                  heartbeat_seconds=HEARTBEAT_SECONDS,
                                  redis_prefix=f"bench-{uuid.uuid4().hex[:8]}")
        remote = RedisEngine(settings, url)
        await remote.start()
        workers = Workers(url, model, folder, settings.redis_prefix)
        try:
            async with EngineClient(settings, [OPS]) as client:
                local = LocalEngine(client, settings)
                await run_jobs(local, [make_request(0, count=1)])  # warm-up
                await workers.grow(remote, 1)
                local_times, remote_times = [], []
                for _ in range(2):  # interleaved halves, so that load hits both alike
                    local_times += await per_job(local, jobs // 2)
                    remote_times += await per_job(remote, jobs // 2)
            # Fresh requests (job ids) for each run; the same seeds for the CPU runs.
            throughput: dict[int, float] = {}
            cpu: dict[int, float] = {}
            for count in (1, 2, 4):
                await workers.grow(remote, count)
                throughput[count] = await run_jobs(remote, [sleeping(i) for i in range(jobs)])
                if count <= 2:
                    cpu[count] = await run_jobs(remote, [make_request(i, count=1)
                                                         for i in range(jobs // 2)])
        finally:
            await remote.close()
            workers.close()
    local_ms, remote_ms = (statistics.median(t) * 1000 for t in (local_times, remote_times))
    ideal = jobs * SLEEP_STEPS * SLEEP_PAUSE
    return {
        "jobs": jobs, "cpus": os.cpu_count(),
        "local_ms_per_job": round(local_ms, 1), "redis_ms_per_job": round(remote_ms, 1),
        "added_ms_per_job": round(remote_ms - local_ms, 1),
        "sleep_job_seconds": SLEEP_STEPS * SLEEP_PAUSE,
        **{f"sleep_{n}_workers_seconds": round(s, 2) for n, s in throughput.items()},
        **{f"sleep_{n}_workers_speedup": round(throughput[1] / s, 2)
           for n, s in throughput.items()},
        "sleep_1_worker_efficiency": round(ideal / throughput[1], 2),
        "cpu_jobs": jobs // 2,
        **{f"cpu_{n}_workers_seconds": round(s, 2) for n, s in cpu.items()},
        "cpu_2_workers_speedup": round(cpu[1] / cpu[2], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    use_threads(1)
    result = asyncio.run(measure(args.jobs))
    print_result(result, args.json)


if __name__ == "__main__":
    main()
