"""One GPU run that measures the engine's speed work: ``python -m bench.gpu_session``.

    python -m bench.gpu_session [--budget SECONDS] [--smoke] [--out DIR] [--stages S0,S3]

Stages S0 to S8 (bench/gpu_stages.py) run in order within the budget (default 540 s, so a
10-minute command limit leaves room for the start); ``<out>/gpu_session.json`` is rewritten
after every stage and every configuration. ``--out`` defaults to ``$OUT`` (the GPU tool's
folder that comes back), else ``./gpu_session_out``. ``--smoke`` runs every stage with toy
models in about a minute, on the GPU if there is one, else on the CPU (CI). The run needs
only torch: diffusers and the pydantic set come from ``.whl/`` (bench/fetch_wheels.sh,
bench/README.md), installed before anything imports them.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from bench import gpu_bootstrap

DEFAULT_BUDGET = 540.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_session",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help="seconds for the whole run; a stage starts only if its estimate "
                        "fits what is left (default %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help="toy models: every stage in about a minute, timings meaningless")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for gpu_session.json (default $OUT, else ./gpu_session_out)")
    parser.add_argument("--stages", default="",
                        help="comma-separated stage names to run, e.g. S0,S7 (default all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse(argv)
    wheels = gpu_bootstrap.install()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("engine").setLevel(logging.INFO)

    import diffusers
    import torch
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    from bench.gpu_configs import FULL_PLAN, SMOKE_PLAN
    from bench.gpu_run import Session
    from bench.gpu_stages import STAGES, Context

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("gpu_session: the full run needs a CUDA GPU; use --smoke on a CPU")
    chosen = [name.strip() for name in args.stages.split(",") if name.strip()]
    unknown = set(chosen) - {stage.name for stage in STAGES}
    if unknown:
        raise SystemExit(f"gpu_session: unknown stage(s) {', '.join(sorted(unknown))}")
    plan = SMOKE_PLAN if args.smoke else FULL_PLAN
    out = args.out or Path(os.environ.get("OUT") or "gpu_session_out")
    header = {"smoke": args.smoke, "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
              "wheels_installed": wheels, "device_type": device.type,
              "plan": {"size": plan.size, "fit_steps": plan.fit_steps, "grid": plan.grid,
                       "warmup_steps": plan.warmup_steps, "big_batch": plan.big_batch,
                       "upscale_size": plan.upscale_size}}
    session = Session(out, args.budget, header, plan.stage_seconds, started=started)
    with tempfile.TemporaryDirectory(prefix="gpu-session-") as work:
        context = Context(plan, device, session, Path(work))
        session.run([stage for stage in STAGES if not chosen or stage.name in chosen], context)
    path = session.write()
    print(f"report: {path} ({session.elapsed():.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
