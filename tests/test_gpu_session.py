"""bench.gpu_session: the one GPU run, checked on the CPU with toy models (its --smoke mode),
and its frame (budget guard, per-stage and per-configuration failures, carried wheels)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import gpu_bootstrap
from bench.gpu_configs import FULL, SMOKE_PLAN
from bench.gpu_measure import count_flops, fit
from bench.gpu_run import OOM, REPORT, Session, Skip, Stage

ROOT = Path(__file__).resolve().parent.parent
STAGES = [f"S{n}" for n in range(9)]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _numbers(value: Any, key: str = "") -> list[tuple[str, Any]]:
    """Every (key, leaf) of a JSON document."""
    if isinstance(value, dict):
        return [leaf for k, item in value.items() for leaf in _numbers(item, k)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _numbers(item, key)]
    return [(key, value)]


def _refuse_constant(text: str) -> Any:
    raise ValueError(f"non-finite number {text} in the report")


@pytest.mark.slow
def test_smoke_runs_every_stage_and_reports_finite_numbers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bench.gpu_session", "--smoke", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / REPORT).read_text(), parse_constant=_refuse_constant)

    assert report["smoke"] is True
    assert report["problems"] == []
    assert list(report["stages"]) == STAGES
    for name, stage in report["stages"].items():
        if stage["status"] == "skipped":  # only what this machine cannot run, with the reason
            assert report["device_type"] == "cpu" and name == "S6", stage
            assert "Hopper" in stage["reason"]
        else:
            assert stage["status"] == "ok", (name, stage)
    for key, leaf in _numbers(report):
        if isinstance(leaf, float):
            assert math.isfinite(leaf), key
        if isinstance(leaf, str) and leaf in ("inf", "-inf", "nan"):
            assert (key, leaf) == ("psnr_db", "inf")

    stages = {name: stage.get("result", {}) for name, stage in report["stages"].items()}
    grid = SMOKE_PLAN.grid
    for name, configs in (("S1", ["plain-fp16@b1", f"plain-fp16@b{grid}", f"plain-bf16@b{grid}",
                                  f"engine@b{grid}"]),
                          ("S2", ["plain-bf16@b1", f"plain-bf16@b{grid}", f"engine@b{grid}"])):
        assert list(stages[name]["configs"]) == configs
        for config in stages[name]["configs"].values():
            assert config["checks"]["ok"] and config["s_per_grid"] > 0
    assert stages["S2"]["configs"][f"engine@b{grid}"]["vs_plain_bf16"] > 0
    assert stages["S3"]["runner_vs_bare"]["max_abs_diff"] == 0
    assert stages["S3"]["png"]["s_per_grid"] > 0
    for exact in ("reference", "fast-remake"):
        assert stages["S5"][exact] == {"tier": "reference", "psnr_db": "inf",
                                       "max_abs_diff": 0, "images": SMOKE_PLAN.drift_images}
    for name in ("S7", "S8"):
        assert stages[name][f"compiled@b{grid}"]["checks"]["ok"]
        assert "compile_s" in stages[name]
    assert set(report["summary"]) == {"sdxl_fast", "sdxl_lossy", "flux_fast"}


def _session(tmp_path: Path, clock: Clock, budget: float = 100.0,
             seconds: dict[str, float] | None = None) -> Session:
    return Session(tmp_path, budget, {"smoke": True}, seconds or {}, clock=clock)


def _report(tmp_path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((tmp_path / REPORT).read_text())
    return report


def test_a_stage_that_does_not_fit_the_budget_left_is_skipped(tmp_path: Path) -> None:
    clock = Clock()
    ran: list[str] = []

    def work(name: str, seconds: float) -> Stage:
        def run(context: Any, result: dict[str, Any]) -> None:
            ran.append(name)
            clock.now += seconds
        return Stage(name, name, run)

    session = _session(tmp_path, clock, budget=100,
                       seconds={"S0": 10, "S1": 80, "S2": 30, "S3": 5})
    session.run([work("S0", 10), work("S1", 70), work("S2", 1), work("S3", 1)], None)

    assert ran == ["S0", "S1", "S3"]  # 20 s left when S2 (30 s) was due
    stages = _report(tmp_path)["stages"]
    assert stages["S2"]["status"] == "skipped-budget"
    assert "S2 needs about 30 s and 20 s" in stages["S2"]["reason"]
    assert [stages[name]["status"] for name in ("S0", "S1", "S3")] == ["ok"] * 3


def test_an_oom_or_error_in_a_stage_is_recorded_and_the_next_stage_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    freed: list[bool] = []
    monkeypatch.setattr("bench.gpu_run.free_memory", lambda: freed.append(True))
    seen_running: list[str] = []

    def out_of_memory(context: Any, result: dict[str, Any]) -> None:
        seen_running.append(_report(tmp_path)["stages"]["S0"]["status"])
        result["before"] = 1.5  # what a stage learned before it failed is kept
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    def broken(context: Any, result: dict[str, Any]) -> None:
        raise ValueError("bad shape")

    def not_here(context: Any, result: dict[str, Any]) -> None:
        raise Skip("needs a Hopper GPU")

    def fine(context: Any, result: dict[str, Any]) -> None:
        result["value"] = 2.0

    session = _session(tmp_path, Clock())
    session.run([Stage("S0", "oom", out_of_memory), Stage("S1", "error", broken),
                 Stage("S2", "skip", not_here), Stage("S3", "ok", fine)], None)

    stages = _report(tmp_path)["stages"]
    assert seen_running == ["running"]  # written before the stage ran
    assert stages["S0"]["status"] == OOM and "Tried to allocate" in stages["S0"]["error"]
    assert stages["S0"]["result"] == {"before": 1.5}
    assert freed == [True]
    assert stages["S1"]["status"] == "error" and "ValueError: bad shape" in stages["S1"]["error"]
    assert stages["S2"] == {"title": "skip", "status": "skipped", "result": {},
                            "reason": "needs a Hopper GPU", "seconds": 0.0}
    assert stages["S3"]["status"] == "ok" and stages["S3"]["result"] == {"value": 2.0}


def test_an_oom_in_one_configuration_leaves_the_others_of_its_stage(
        tmp_path: Path) -> None:
    from bench.gpu_stages import Context, attempt

    session = _session(tmp_path, Clock())
    context = Context(SMOKE_PLAN, torch.device("cpu"), session, tmp_path)
    configs: dict[str, Any] = {}

    def too_big() -> dict[str, Any]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    assert attempt(context, configs, "flux@b8", too_big) is None
    assert attempt(context, configs, "flux@b4", lambda: {"s_per_grid": 1.0}) == {
        "s_per_grid": 1.0}
    assert configs["flux@b8"]["status"] == OOM
    assert _report(tmp_path)["problems"] == ["flux@b8: oom"]


def test_the_step_fit_separates_fixed_time_from_time_per_step() -> None:
    fixed, per_step = fit({12: 0.5 + 12 * 0.25, 4: 0.5 + 4 * 0.25})
    assert fixed == pytest.approx(0.5) and per_step == pytest.approx(0.25)


def test_only_missing_or_older_distributions_are_installed_from_wheels(tmp_path: Path) -> None:
    for name in ("imaginebot_no_such_dist-1.0-py3-none-any.whl", "pip-0.1-py3-none-any.whl",
                 "pip-9999.0-py3-none-any.whl"):
        (tmp_path / name).touch()
    assert [wheel.name for wheel in gpu_bootstrap.wanted(tmp_path)] == [
        "imaginebot_no_such_dist-1.0-py3-none-any.whl", "pip-9999.0-py3-none-any.whl"]
    assert gpu_bootstrap.release("2.11.0+cu130") == (2, 11, 0)
    assert gpu_bootstrap.release("1.0rc1") == (1, 0)


@pytest.mark.slow
def test_the_full_configs_have_the_anchors_flop_floors() -> None:
    """The architectures are the real ones: at 790 TFLOP/s their FLOPs give the issue's
    floors, 0.53 s for SDXL (30 steps) and 2.66 s for FLUX-dev (28 steps) at 1024²."""
    sdxl, flux = count_flops("sdxl", FULL["sdxl"], 1024), count_flops("flux", FULL["flux"], 1024)
    assert 30 * sdxl["step_tflop"] / 790 == pytest.approx(0.53, rel=0.05)
    assert 28 * flux["step_tflop"] / 790 == pytest.approx(2.66, rel=0.05)
