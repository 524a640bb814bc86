"""Tiny test models, built once per test session and shared by the engine tests.

Import ``tiny_model_fixture`` into a test module; tests then ask for ``tiny_model``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine.testmodels import make_test_model

TinyModel = Callable[[str], Path]


@pytest.fixture(scope="session", name="tiny_model")
def tiny_model_fixture(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """``tiny_model("sd15")`` -> folder of a tiny random model of that family."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = make_test_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return get
