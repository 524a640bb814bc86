#!/usr/bin/env bash
# Full-size SDXL and FLUX, plain diffusers against the engine's settings, on one NVIDIA GPU.
#
# For a machine that has torch but neither diffusers nor internet: Python packages come from
# wheels carried along in $WHEELS (default: wheels/ in the repo root; see bench/README.md for
# the one pip download command that fills it). Results go to stdout and, when $OUT is set, to
# $OUT/gpu_bench.json.
#
#   bash bench/gpu.sh              # sdxl and flux, 1024x1024, 28 steps, 4 images per call
#   bash bench/gpu.sh --compile    # also torch.compile the denoiser on the engine side
#   bash bench/gpu.sh --smoke      # toy sizes; runs on a CPU in about a minute
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}

if ! "$PYTHON" -c "import diffusers" 2>/dev/null; then
    if [ ! -d "$WHEELS" ]; then
        echo "gpu.sh: diffusers is missing and there is no $WHEELS/ folder of wheels" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/gpu-bench-site "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/gpu-bench-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers',
diffusers.__version__, 'cuda', torch.cuda.is_available())"
exec "$PYTHON" -m bench.gpu_bench "$@"
