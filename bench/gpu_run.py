"""The run's frame: the budget guard, one outcome per stage, and the JSON written after each.

A GPU lease is short and a run may be cut off at any point, so the report is rewritten
(atomically) whenever something is learned, and nothing one stage does can stop the next:
a stage that would not fit the time left is skipped, an out-of-memory error frees the
allocator's cache and is recorded, any other exception is recorded with its text. Standard
library at import: bench.gpu_session imports this before the carried wheels are installed.
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT = "gpu_session.json"
#: Outcomes of a stage or of one configuration inside it.
OK, SKIPPED, SKIPPED_BUDGET, OOM, ERROR = "ok", "skipped", "skipped-budget", "oom", "error"


class Skip(Exception):
    """A stage or configuration that cannot run here; the message is the reason (fp8 on CPU)."""


class OutOfBudget(Skip):
    """Not enough of the budget is left for this work."""


@dataclass(frozen=True)
class Stage:
    """``run(context, result)`` fills ``result`` as it goes and may call Session.write, so
    what a stage learned before it failed, or before the lease ended, is in the report."""

    name: str
    title: str
    run: Callable[[Any, dict[str, Any]], None]


def outcome(error: BaseException) -> tuple[str, str]:
    """(status, text) for an exception a stage or configuration raised."""
    if isinstance(error, OutOfBudget):
        return SKIPPED_BUDGET, str(error)
    if isinstance(error, Skip):
        return SKIPPED, str(error)
    import torch

    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return OOM, text[:2000]
    frames = traceback.extract_tb(error.__traceback__)[-4:]
    where = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames)
    return ERROR, f"{text[:2000]} (at {where})"


def free_memory() -> None:
    """After an OOM: drop what the failed work left and return the allocator's cache."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def clean(value: Any) -> Any:
    """JSON-safe and readable: floats to 6 significant digits, non-finite ones as strings."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(key): clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean(item) for item in value]
    return str(value)


class Session:
    """Runs stages against one budget and keeps ``<out>/gpu_session.json`` current."""

    def __init__(self, out_dir: Path, budget_s: float, header: dict[str, Any],
                 stage_seconds: dict[str, float],
                 clock: Callable[[], float] = time.monotonic,
                 started: float | None = None) -> None:
        self.out_dir = out_dir
        self.budget_s = budget_s
        self.stage_seconds = stage_seconds
        self._clock = clock
        self._started = clock() if started is None else started
        self.report: dict[str, Any] = {**header, "budget_s": budget_s, "stages": {},
                                       "problems": []}
        out_dir.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return self._clock() - self._started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def guard(self, seconds: float, what: str) -> None:
        """Raise OutOfBudget unless ``seconds`` of the budget are left for ``what``."""
        if self.left() < seconds:
            raise OutOfBudget(f"{what} needs about {seconds:.0f} s and {self.left():.0f} s "
                              "of the budget are left")

    def problem(self, text: str) -> None:
        """Something a reader must not miss (a failed activation check), listed at the top."""
        self.report["problems"].append(text)

    def write(self) -> Path:
        self.report["elapsed_s"] = self.elapsed()
        path = self.out_dir / REPORT
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(clean(self.report), indent=1, allow_nan=False))
        os.replace(partial, path)
        return path

    def run(self, stages: Iterable[Stage], context: Any) -> dict[str, Any]:
        for stage in stages:
            entry: dict[str, Any] = {"title": stage.title}
            self.report["stages"][stage.name] = entry
            estimate = self.stage_seconds.get(stage.name, 0.0)
            try:
                self.guard(estimate, stage.name)
            except OutOfBudget as skipped:
                entry.update(status=SKIPPED_BUDGET, reason=str(skipped))
                self.write()
                continue
            entry.update(status="running", result={})
            self.write()
            started = self._clock()
            failed = False
            try:
                stage.run(context, entry["result"])
                entry["status"] = OK
            except Exception as error:  # one stage's failure must not end the run
                entry["status"], text = outcome(error)
                entry["reason" if entry["status"].startswith(SKIPPED) else "error"] = text
                failed = entry["status"] == OOM
                del error
            if failed:
                free_memory()
            entry["seconds"] = self._clock() - started
            print(f"{stage.name} {stage.title}: {entry['status']} in {entry['seconds']:.1f} s "
                  f"({self.left():.0f} s left)", flush=True)
            self.write()
        return self.report
