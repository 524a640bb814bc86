"""``imaginebot worker``'s options: what a GPU host overrides of its own settings."""

from __future__ import annotations

import argparse
import os

import pytest

from bot.cli import build_parser
from engine.remote.cli import worker_command, worker_settings
from engine.settings import EngineSettings


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["worker", *argv])


def test_options_override_the_hosts_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    settings = worker_settings(parse("--device", "cuda:1", "--models", "a, b,c",
                                     "--max-batch", "2"),
                               EngineSettings(max_batch=8, pipeline_cache_size=3))
    assert (settings.device, settings.model, settings.models) == ("cuda", "a", ["b", "c"])
    assert (settings.max_batch, settings.pipeline_cache_size) == (2, 3)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"  # the GPU process sees that GPU only


@pytest.mark.parametrize("argv", [("--device", "gpu"), ("--device", "cpu:1"),
                                  ("--models", " , "), ("--max-batch", "0")])
def test_bad_options_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        worker_settings(parse(*argv), EngineSettings())


def test_a_worker_needs_a_redis_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert worker_command(parse(), EngineSettings()) == 2
    assert "--queue redis://" in capsys.readouterr().err
