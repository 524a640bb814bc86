#!/usr/bin/env bash
# Install imaginebot with its test tools into .venv and run the whole test suite.
# torch 2.14.1 + torchvision 0.29.1 are PyPI's default Linux wheels; they run on CPU and on NVIDIA GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e '.[dev,postgres]'
exec .venv/bin/python -m pytest -q "$@"
