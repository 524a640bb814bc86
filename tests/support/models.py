"""Tiny test models, built once per test session and shared by the engine tests.

Registered in tests/conftest.py; tests ask for ``tiny_model``, and in-process model tests
for ``one_thread``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TinyModel = Callable[[str], Path]


@pytest.fixture(scope="session", name="tiny_model")
def tiny_model_fixture(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """``tiny_model("sd15")`` -> folder of a tiny random model of that family."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            from engine.testmodels import make_test_model  # torch: only when a test needs it

            built[family] = make_test_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return get


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, above all on a shared CI machine; for tests that
    run a model in the test's own process (a worker process is given OMP_NUM_THREADS)."""
    import torch  # only when a test needs it

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
