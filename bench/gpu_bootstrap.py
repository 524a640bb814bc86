"""Make the wheels carried in ``.whl/`` importable, before anything imports torch or the engine.

The GPU machine has torch, transformers, Pillow, safetensors and huggingface_hub, but no
diffusers, no pydantic and no package index (bench/README.md). bench/fetch_wheels.sh fills
``.whl/`` here; this installs, into a temporary folder put first on ``sys.path``, each carried
wheel whose distribution is missing or older than the wheel (pydantic needs a newer
typing_extensions than some images have). Standard library only: it runs before the packages
it provides exist. It must run before torch is imported, since torch imports
typing_extensions and a module imported once is not replaced.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

WHEELS = Path(__file__).resolve().parent.parent / ".whl"
#: What the session cannot run without; the rest of the engine's imports come with torch's image.
REQUIRED = ("diffusers", "pydantic", "pydantic_settings")


def release(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: ``2.14.4`` -> (2, 14, 4)."""
    numbers: list[int] = []
    for part in version.split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match[0]))
        if match.end() < len(part):
            break
    return tuple(numbers)


def wanted(folder: Path) -> list[Path]:
    """The wheels in ``folder`` whose distribution is missing or older than the wheel's."""
    chosen: list[Path] = []
    for wheel in sorted(folder.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            chosen.append(wheel)
            continue
        if release(installed) < release(version):
            chosen.append(wheel)
    return chosen


def install(folder: Path = WHEELS) -> list[str]:
    """Install what :func:`wanted` picks and put it on ``sys.path``; return the wheel names.

    Raises SystemExit naming the fix when a required module is still missing afterwards.
    """
    wheels = wanted(folder) if folder.is_dir() else []
    if wheels:
        target = tempfile.mkdtemp(prefix="gpu-session-site-")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--no-cache-dir", "--target", target,
                        *map(str, wheels)], check=True)
        sys.path.insert(0, target)
        # Inductor's compile workers are new processes: they need the same path.
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [target, *filter(None, [os.environ.get("PYTHONPATH")])])
        importlib.invalidate_caches()
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"gpu_session: {', '.join(missing)} missing and {folder} has no "
                         "wheel for it: run `bash bench/fetch_wheels.sh` where pip reaches an "
                         "index, and carry .whl/ along")
    return [wheel.name for wheel in wheels]
