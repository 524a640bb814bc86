"""Batching: 8 compatible requests submitted together against the same 8 one after another.

Both go through the same EngineClient and worker; together they run as one batch of up to
settings.max_batch images. The images must come out the same either way.

    .venv/bin/python -m bench.batching [--requests 8] [--json]
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.engine_overhead import bench_model, engine_settings, make_request
from bench.engine_overhead import main as run_benchmark
from engine.client import EngineClient
from engine.events import Done, Failed


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _check(results: list[Done | Failed]) -> list[Done]:
    done = [r for r in results if isinstance(r, Done)]
    if len(done) != len(results):
        raise RuntimeError("a benchmark request failed")
    return done


async def measure(requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        model = bench_model(Path(tmp) / "model")
        settings = engine_settings(model, Path(tmp) / "outputs", max_batch=requests)
        async with EngineClient(settings) as client:
            await client.generate(make_request(0, count=1))  # warm-up
            started = time.perf_counter()
            alone = _check([await client.generate(make_request(seed, count=1,
                                                               job_id=f"seq-{seed}"))
                            for seed in range(1, requests + 1)])
            sequential = time.perf_counter() - started

            started = time.perf_counter()
            together = _check(list(await asyncio.gather(*(
                client.generate(make_request(seed, count=1, job_id=f"batch-{seed}"))
                for seed in range(1, requests + 1)))))
            concurrent = time.perf_counter() - started
            # A batch must not change what anyone gets.
            difference = max(int(np.abs(_pixels(a.images[0].path)
                                        - _pixels(b.images[0].path)).max())
                             for a, b in zip(alone, together, strict=True))
    return {
        "requests": requests, "sequential_seconds": round(sequential, 3),
        "concurrent_seconds": round(concurrent, 3), "speedup": round(sequential / concurrent, 3),
        "batch_sizes": sorted({d.metadata["batch_images"] for d in together}),
        "max_pixel_difference": difference,
    }


if __name__ == "__main__":
    run_benchmark(measure, __doc__)
