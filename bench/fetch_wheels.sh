#!/usr/bin/env bash
# Download the wheels that `python -m bench.gpu_session` installs on a GPU machine that has
# PyTorch (and transformers, Pillow, safetensors, huggingface_hub) but no package index.
#
# The GPU image lacks diffusers and the pydantic set the engine's settings need (the engine's
# FP8 is its own, engine.speed.Float8RowwiseLinear: no torchao). Versions are pinned to what
# this checkout's .venv runs, so the GPU run uses the code the tests ran. Run here, where pip
# reaches an index:
#
#   bash bench/fetch_wheels.sh          # cp312 manylinux wheels into .whl/ (about 9 MB)
#   PY=3.11 DEST=/tmp/whl311 bash bench/fetch_wheels.sh   # the same set for another Python
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.12}
DEST=${DEST:-.whl}
VENV_PYTHON=${VENV_PYTHON:-.venv/bin/python}

# The distributions the engine imports that the GPU image does not ship, and theirs.
PACKAGES="diffusers importlib_metadata lazy-importer zipp pydantic pydantic_core pydantic-settings
annotated-types typing-inspection typing_extensions python-dotenv"
PINS=$("$VENV_PYTHON" - $PACKAGES <<'EOF'
import importlib.metadata, sys
print(" ".join(f"{name}=={importlib.metadata.version(name)}" for name in sys.argv[1:]))
EOF
)
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
# shellcheck disable=SC2086  # PINS is a list of words
"$VENV_PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" $PINS \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
ls -1 "$DEST"
du -sh "$DEST"
