"""What the state machines of the job queue share (tests/test_job_lifecycle_state_machine.py,
tests/test_job_dispatch_state_machine.py, and tests/test_bot_dispatch.py's runs): a Discord
that delivers as planned (``Observer``), ``settle``, which runs the event loop until every task
waits on the test so that the same steps always end the same way, and ``QueueMachine``, the
loop, SQLite file and fake clock of one machine's run.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hypothesis.stateful import RuleBasedStateMachine

from bot.jobs.api import DeliveryError, Ending
from bot.jobs.models import Job
from bot.jobs.queue import POSITION_INTERVAL
from bot.ledger import Ledger
from engine.events import Progress
from tests.support.ledger import FakeClock

T = TypeVar("T")

#: Seconds of real time one settle may take before the machine calls the queue stuck.
SETTLE_LIMIT = 30.0


class Observer:
    """A Discord that posts results as planned per job, and counts what users were shown.

    A post that hangs was sent but not answered, as with retried 502s; posting again lands on
    the same message, as a nonce makes it (the contract of ``JobObserver.deliver``).
    """

    def __init__(self) -> None:
        self.plans: dict[str, str] = {}
        #: Deliveries waiting for the test to let them end, by job id.
        self.hanging: dict[str, asyncio.Event] = {}
        #: Posts that Discord answered, and the one message each job's posts land on.
        self.posts: Counter[str] = Counter()
        self.messages: dict[str, int] = {}
        self.endings: dict[str, list[Ending]] = {}
        #: What the queue asked of Discord that it must not (raising would look like a failed
        #: post to the queue, so it is written down here instead).
        self.violations: list[str] = []

    async def deliver(self, job: Job) -> int:
        if job.result is None:
            self.violations.append(f"job {job.id} posted without a result")
        if job.result_message_id is not None:
            self.violations.append(f"job {job.id} posted again, although its message "
                                   f"{job.result_message_id} is recorded")
        if self.plans.get(job.id, "ok") == "hang":
            gate = self.hanging[job.id] = asyncio.Event()
            try:
                await gate.wait()
            finally:
                del self.hanging[job.id]
        plan = self.plans.get(job.id, "ok")
        if plan == "undeliverable":
            raise DeliveryError("the result is too large")
        if plan == "error":
            raise RuntimeError("Discord answered 503")
        self.posts[job.id] += 1
        return self.messages.setdefault(job.id, 1000 + len(self.messages))

    async def ended(self, job: Job, ending: Ending) -> None:
        self.endings.setdefault(job.id, []).append(ending)

    async def resumed(self, job: Job, position: int) -> None: ...

    async def paused(self, job: Job) -> None: ...

    async def moved(self, job: Job, position: int) -> None: ...

    async def started(self, job: Job) -> None: ...

    async def progress(self, job: Job, event: Progress) -> None: ...

    async def requeued(self, job: Job, position: int) -> None: ...


def _innermost(task: asyncio.Task[Any]) -> Any:
    """The innermost coroutine a task is suspended in."""
    coroutine: Any = task.get_coro()
    while hasattr(getattr(coroutine, "cr_await", None), "cr_code"):
        coroutine = coroutine.cr_await
    return coroutine


def _idle(task: asyncio.Task[Any]) -> bool:
    """Whether the task waits for something only the test gives: an engine event, a held
    delivery, a wake-up, its children, the announcer's pause. Not: a lock, a database call,
    a thread, a retry's pause, or a wake-up already given."""
    waiter = getattr(task, "_fut_waiter", None)
    if task.done() or waiter is None or waiter.done():
        return task.done()
    if isinstance(waiter, asyncio.Task) or type(waiter).__name__ == "_GatheringFuture":
        return True  # its children are tasks too, and judged on their own
    coroutine = _innermost(task)
    name = coroutine.cr_code.co_qualname
    if name in ("Event.wait", "Queue.get"):
        return True
    return name == "sleep" and coroutine.cr_frame.f_locals.get("delay") == POSITION_INTERVAL


async def settle() -> None:
    """Run the loop until every other task is idle; fail if that takes SETTLE_LIMIT."""
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    deadline = time.monotonic() + SETTLE_LIMIT
    for turn in itertools.count():
        await asyncio.sleep(0 if turn < 5 else 0.001)
        busy = [task for task in asyncio.all_tasks() if task is not me and not _idle(task)]
        if not busy and not loop._ready:  # type: ignore[attr-defined]
            return
        if time.monotonic() > deadline:
            stacks = "\n".join(f"{task.get_name()}: {_innermost(task)}" for task in busy)
            raise AssertionError(f"the queue is stuck, busy for {SETTLE_LIMIT} s:\n{stacks}")


async def stop_tasks() -> None:
    """The process dies: every other task stops where it waits, nothing is cleaned up."""
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class QueueMachine(RuleBasedStateMachine):
    """One run of a machine: its own event loop, SQLite file (``url``), fake clock and Discord.

    A subclass boots the bot (setting ``ledger``) and drives it with ``step``."""

    ledger: Ledger

    def __init__(self, prefix: str, observer: Observer) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = Path(tempfile.mkdtemp(prefix=prefix))
        self.url = f"sqlite+aiosqlite:///{self.directory / 'bot.db'}"
        self.clock = FakeClock()
        self.observer = observer
        self.interactions = itertools.count(1)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def step(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Do one thing, then let the bot react to it."""

        async def go() -> T:
            value = await coroutine
            await settle()
            return value

        return self.run(go())

    async def kill(self) -> None:
        await stop_tasks()
        await self.ledger.close()

    def teardown(self) -> None:
        try:
            self.run(self.kill())
        finally:
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)
