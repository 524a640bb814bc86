"""``imaginebot playground`` itself: it serves the page, answers through the real bot, and a
Ctrl-C stops it with status 0 and nothing it started left running."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.playground_process import (
    ProcStat,
    all_processes,
    descendants,
    proc_stat,
    start_playground,
)

pytestmark = pytest.mark.slow

#: The bot's answer to /credits (no engine involved) on two busy cores.
ANSWER_SECONDS = 30.0


def get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers.get_content_type(), response.read().decode()


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def alive(stat: ProcStat) -> bool:
    """Whether that very process (not a later one with its pid) still runs."""
    now = proc_stat(stat.pid)
    return now is not None and now.start == stat.start and now.state != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def test_the_command_serves_the_page_answers_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    playground = start_playground(tmp_path / "data")
    try:
        kind, page = get(playground.url)
        assert kind == "text/html" and 'aria-label="Message"' in page

        # One round trip through the bot: /credits as alice, answered in her view only.
        _, raw = get(playground.url + "api/state?user=alice")  # by name, as the page asks
        users = {user["name"]: user["id"] for user in json.loads(raw)["users"]}
        sent = post(playground.url + "api/command",
                    {"user": users["alice"], "name": "credits", "options": {}})
        assert sent["responded"], sent
        deadline = time.monotonic() + ANSWER_SECONDS
        reply: dict[str, Any] | None = None
        while reply is None and time.monotonic() < deadline:
            _, raw = get(f"{playground.url}api/state?user={users['alice']}")
            reply = next((m for m in json.loads(raw)["messages"]
                          if (m.get("interaction") or {}).get("id") == sent["interaction_id"]
                          and m["embeds"]), None)
            time.sleep(0.2)
        assert reply is not None and reply["ephemeral"], f"no answer to /credits: {reply}"

        started = descendants(playground.process.pid)
        commands = [cmdline(p.pid) for p in started]
        assert any(" bot run" in c for c in commands), f"no bot among {commands}"
        assert any("spawn_main" in c for c in commands), f"no engine worker among {commands}"
        sessions = {playground.process.pid} | {p.session for p in started}
        status = playground.stop(signal.SIGINT)
    finally:
        playground.kill()

    assert status == 0, playground.output()
    left = [cmdline(p.pid) for p in started if alive(p)]
    left += [cmdline(p.pid) for p in all_processes()
             if p.session in sessions and p.state != "Z"]
    assert not left, f"still running after the playground exited: {left}"
