"""Test-wide environment: offline, quiet, and isolated from the developer's own settings."""

from __future__ import annotations

import os

# The shared fixtures, all in tests/support/ (its __init__ lists what each module offers).
pytest_plugins = ["tests.support.emulator", "tests.support.bot", "tests.support.sandbox_bot",
                  "tests.support.models", "tests.support.upscaler", "tests.support.ledger",
                  "tests.support.redis", "tests.support.browser"]

# Nothing may reach a model hub; tiny models are built locally.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP's busy-waiting threads starve each other on a small shared CPU (seen: 47 s instead of
# 0.8 s for one step); sleeping waits cost nothing measurable here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# A developer's IMAGINEBOT_* variables must not change what the tests see.
for _name in [name for name in os.environ if name.startswith("IMAGINEBOT_")]:
    if _name not in ("IMAGINEBOT_TEST_POSTGRES_URL", "IMAGINEBOT_TEST_REDIS_URL"):
        del os.environ[_name]
