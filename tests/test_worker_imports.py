"""The engine worker stays lean: what it imports never pulls in Discord or the database.

The worker is a spawned process that imports the engine and the plugins' operation modules by
name; a stray import of the bot side there would load discord.py and SQLAlchemy into every
worker (and tie the engine to the bot). lint-imports checks the engine's own imports; this
checks what actually ends up loaded, plugins' operation modules included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bot._plugin_registry import PluginRegistry
from bot.settings import Settings

REPO = Path(__file__).resolve().parents[1]
# What worker_main imports: itself, the operation registry, the runner it builds, and the
# operation modules the bot hands it.
ENGINE_MODULES = ("engine.worker", "engine.operations", "engine.runner")
BOT_SIDE = ("discord", "sqlalchemy")

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def loaded_top_level_packages(modules: list[str]) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", PROBE, *modules], capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=300, check=True)
    return set(json.loads(result.stdout))


def test_worker_modules_load_neither_discord_nor_sqlalchemy() -> None:
    operation_modules = PluginRegistry(Settings()).operation_modules()
    assert "plugins.upscale.engine_ops" in operation_modules
    loaded = loaded_top_level_packages([*ENGINE_MODULES, *operation_modules])
    assert {"engine", "plugins"} <= loaded
    assert loaded.isdisjoint(BOT_SIDE), sorted(loaded & set(BOT_SIDE))


def test_the_probe_sees_the_bot_side() -> None:
    """The same probe on a bot module does report discord and sqlalchemy."""
    assert set(BOT_SIDE) <= loaded_top_level_packages(["bot.generation"])
