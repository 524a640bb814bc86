"""The real ``imaginebot playground`` as a subprocess, for the tests that use it whole.

``start_playground(data)`` runs the installed console script on a free loopback port with its
SQLite, images and bot log under ``data``, and returns once it prints its URL (it does so when
the bot has logged in to the emulator and registered its commands). ``stop()`` sends SIGINT,
as Ctrl-C in a terminal does, and returns the exit status.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: The first start imports torch in two processes and migrates a new database: slow on 2 cores.
START_SECONDS = 240.0
STOP_SECONDS = 60.0
URL = re.compile(r"http://127\.0\.0\.1:(\d+)/\S*")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def imaginebot_command() -> list[str]:
    """The installed ``imaginebot`` script next to this Python, as a user runs it."""
    script = Path(sys.executable).with_name("imaginebot")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bot"]


@dataclass
class PlaygroundProcess:
    process: subprocess.Popen[str]
    data: Path
    url: str = ""
    lines: list[str] = field(default_factory=list)
    _url_seen: threading.Event = field(default_factory=threading.Event)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if not self.url and (found := URL.search(line)):
                self.url = found.group(0)
                self._url_seen.set()
        self._url_seen.set()  # the output ended: nothing more will come

    def output(self) -> str:
        """What it printed so far, and the end of the bot's log: the failure message."""
        log = self.data / "bot.log"
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no bot.log)"
        return "\n".join(self.lines) + f"\n--- {log}:\n{tail}"

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Signal it and wait; a playground that does not stop is killed and fails the test."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)  # a terminal's Ctrl-C signals the whole group
        try:
            return self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the playground did not stop within {STOP_SECONDS:.0f} s of "
                        f"{signal.Signals(sig).name}:\n{self.output()}")

    def kill(self) -> None:
        """Last resort after a failed test: it and everything it started, at once (the bot
        runs in a session of its own, out of reach of the playground's process group)."""
        for pid in [self.process.pid, *(p.pid for p in descendants(self.process.pid))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat these tests need."""

    pid: int
    ppid: int
    session: int
    state: str
    #: Clock ticks after boot: with the pid, it names one process even if the pid is reused.
    start: int


def proc_stat(pid: int) -> ProcStat | None:
    """None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in parentheses may itself hold spaces and parentheses.
    fields = text[text.rindex(")") + 2:].split()
    return ProcStat(pid, int(fields[1]), int(fields[3]), fields[0], int(fields[19]))


def all_processes() -> list[ProcStat]:
    stats = (proc_stat(int(entry.name)) for entry in Path("/proc").iterdir()
             if entry.name.isdigit())
    return [stat for stat in stats if stat is not None]


def descendants(pid: int) -> list[ProcStat]:
    """Every living process started by ``pid``, its children's children included."""
    children: dict[int, list[ProcStat]] = {}
    for stat in all_processes():
        children.setdefault(stat.ppid, []).append(stat)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def start_playground(data: Path, env: dict[str, str] | None = None,
                     port: int | None = None) -> PlaygroundProcess:
    """Start ``imaginebot playground`` (in ``data``, so nothing lands in the checkout) and wait
    for its URL. ``env`` adds settings to the test environment (which has no IMAGINEBOT_*)."""
    data.mkdir(parents=True, exist_ok=True)
    command = [*imaginebot_command(), "playground", "--port", str(port or free_port()),
               "--data", str(data)]
    process = subprocess.Popen(
        command, cwd=data, env=os.environ | (env or {}) | {"PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # its own group: kill() can end everything it started
    playground = PlaygroundProcess(process, data)
    threading.Thread(target=playground._read, daemon=True).start()
    if not playground._url_seen.wait(START_SECONDS) or not playground.url:
        playground.kill()
        pytest.fail(f"`{' '.join(command)}` printed no URL within {START_SECONDS:.0f} s "
                    f"(exit status {process.poll()}):\n{playground.output()}")
    return playground
