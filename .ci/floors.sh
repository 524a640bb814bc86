#!/usr/bin/env bash
# Install the lowest version of every dependency that pyproject.toml allows and run the fast
# tests against them, so that each ">=" floor is one that works, not a guess.
#
# torch is the one dependency not pinned to its floor: the README installs the build for the
# hardware first, PyPI's older wheels are CUDA builds of several GB, and the torch floor runs on
# the GPU machine instead. Here torch comes as the README's pair with torchvision (which spandrel
# imports and which must match torch's build), from this machine's disk like scripts/test.sh's.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=(torch==2.14.1 torchvision==0.29.1)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q "${TORCH[@]}" packaging

# Every requirement, optional ones included, must have one ">=" floor; each becomes "==floor".
"$py" - pyproject.toml >"$work/floors.txt" <<'EOF'
import sys
import tomllib

from packaging.requirements import Requirement

with open(sys.argv[1], "rb") as file:
    project = tomllib.load(file)["project"]
lines = list(project["dependencies"])
for extra in project.get("optional-dependencies", {}).values():
    lines += extra
for line in lines:
    requirement = Requirement(line)
    floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    if len(floors) != 1:
        sys.exit(f"floors: {line!r} needs exactly one '>=' floor")
    if requirement.name != "torch":
        print(f"{requirement.name}=={floors[0]}")
EOF
echo "floors: $(paste -sd' ' "$work/floors.txt"), with ${TORCH[*]}"
printf '%s\n' "${TORCH[@]}" >>"$work/floors.txt"
"$py" -m pip install -q -c "$work/floors.txt" -e '.[dev,postgres]'

# The fast suite, then the two slow tests that alone caught floors that were too low: the demo
# model drawing each position word (transformers < 5.6 left its text encoder random) and the
# bot surviving injected REST errors (aiohttp < 3.10.6).
"$py" -m pytest -q -p no:cacheprovider -m "not slow"
"$py" -m pytest -q -p no:cacheprovider tests/test_demo_model.py::test_position_words_place_the_shape \
    tests/test_bot_imagine.py::test_rate_limits_and_server_errors_are_survived
