"""The playground has no login: it serves loopback unless told otherwise, and says so loudly
when told (the page itself is tested in test_playground_api.py and the browser tests)."""

from __future__ import annotations

import argparse
from typing import ClassVar

import pytest

from sandbox import playground


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    playground.add_playground_arguments(parser)
    return parser.parse_args(argv)


class Started:
    """Stands in for the whole playground: these tests are about what happens before it."""

    hosts: ClassVar[list[str]] = []

    def __init__(self, host: str, *_: object) -> None:
        Started.hosts.append(host)

    async def run(self) -> int:
        return 0


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    Started.hosts = []
    monkeypatch.setattr(playground, "Playground", Started)
    return Started.hosts


def test_it_serves_loopback_by_default_and_says_nothing(started, capsys) -> None:
    assert playground.playground_command(parse()) == 0
    assert started == ["127.0.0.1"]
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_any_other_address_is_served_only_with_a_warning(started, capsys, host: str) -> None:
    assert playground.playground_command(parse("--host", host)) == 0
    assert started == [host]
    err = capsys.readouterr().err
    assert f"warning: serving on {host}" in err and "no login" in err


@pytest.mark.parametrize("host", ["localhost", "::1", "127.0.0.2"])
def test_other_loopback_names_need_no_warning(started, capsys, host: str) -> None:
    assert playground.playground_command(parse("--host", host)) == 0
    assert "warning" not in capsys.readouterr().err
