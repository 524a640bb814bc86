"""The worker's queue rules, tested without a process: which requests share a batch."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.batching import batch_key
from engine.events import Failed, Progress
from engine.request import GenerationRequest
from engine.worker import Inbox, Loaded, Loading, Outbox, WorkerMessage, run_batch, take_batch

requests = st.builds(
    GenerationRequest,
    prompt=st.just("a cat"),
    model=st.sampled_from(["a", "b"]),
    width=st.sampled_from([32, 64]),
    height=st.just(32),
    steps=st.sampled_from([2, 3]),
    sampler=st.just("euler"),
    cfg=st.sampled_from([5.0, 7.0]),
    count=st.integers(1, 4),
    operation=st.sampled_from(["txt2img", "txt2img", "upscale"]),
)


@given(st.lists(requests, max_size=12), st.integers(1, 8))
def test_take_batch_takes_the_oldest_and_every_compatible_request_that_fits(pending, max_batch):
    batch, rest = take_batch(pending, max_batch)
    # Nothing lost or duplicated, and both parts keep submission order.
    assert sorted(map(id, batch + rest)) == sorted(map(id, pending))
    order = {id(request): i for i, request in enumerate(pending)}
    assert [order[id(r)] for r in batch] == sorted(order[id(r)] for r in batch)
    assert [order[id(r)] for r in rest] == sorted(order[id(r)] for r in rest)
    if not pending:
        assert batch == []
        return
    head = pending[0]
    assert batch[0] is head
    key = batch_key(head)
    if key is None:
        assert batch == [head]
        return
    assert all(batch_key(r) == key for r in batch)
    assert sum(r.count for r in batch) <= max(max_batch, head.count)
    # Greedy and maximal: a compatible request was left out only because it did not fit.
    for left in rest:
        if batch_key(left) == key:
            before = sum(r.count for r in batch if order[id(r)] < order[id(left)])
            assert before + left.count > max_batch


def test_other_operations_and_differing_settings_never_share_a_batch():
    base = GenerationRequest(prompt="x", model="m", width=32, height=32, steps=2,
                             sampler="euler", cfg=5.0, count=1)
    others = [base.model_copy(update={"job_id": str(i), **change}) for i, change in enumerate([
        {"width": 64}, {"steps": 3}, {"sampler": "ddim"}, {"cfg": 6.0}, {"model": "n"},
        {"operation": "upscale"}, {"negative_prompt": "blurry"}])]
    batch, rest = take_batch([base, *others], 8)
    assert batch == [base]
    assert rest == others
    same = base.model_copy(update={"job_id": "same", "prompt": "y", "seed": 9, "count": 7,
                                   "variation_seed": 3, "variation_strength": 0.5})
    assert take_batch([base, same], 8)[0] == [base, same]


def test_inbox_drops_waiting_jobs_and_marks_running_ones():
    inbox = Inbox(max_batch=1)
    first, second = (GenerationRequest(prompt="x", model="m", width=32, height=32, steps=2,
                                       sampler="euler", cfg=5.0, count=1) for _ in range(2))
    inbox.add([first])
    inbox.add([second])
    assert inbox.take() == [first]
    assert inbox.cancel(second.job_id) is True  # waiting: removed
    assert inbox.cancel(first.job_id) is False  # running: marked
    assert inbox.is_cancelled(first.job_id)
    inbox.finish()
    assert not inbox.is_cancelled(first.job_id)
    assert inbox.cancel("unknown") is False
    assert not inbox.is_cancelled("unknown")

    # take() waits for work and returns None once closed.
    result: list[object] = []
    taker = threading.Thread(target=lambda: result.append(inbox.take()))
    taker.start()
    inbox.close()
    taker.join(5)
    assert result == [None]


class Pipe:
    """The event pipe's sending end, keeping what was sent."""

    def __init__(self) -> None:
        self.sent: list[WorkerMessage] = []

    def send(self, message: WorkerMessage) -> None:
        self.sent.append(message)


class LoadingRunner:
    """Loads a model through the load hook, as Runner does, makes ``steps`` steps, then fails."""

    def __init__(self, on_load: Callable[[str], None], steps: int) -> None:
        self.on_load, self.steps = on_load, steps

    def txt2img(self, batch: list[GenerationRequest], progress: object, cancelled: object, *,
                batch_progress: Callable[[int, int, dict[str, object]], None]) -> None:
        self.on_load("tiny")
        for step in range(1, self.steps + 1):
            batch_progress(step, self.steps, {})
        raise RuntimeError("boom")


@pytest.mark.parametrize(("steps", "expected"), [
    (2, [Loading, Loaded, Progress, Progress, Failed]),
    (0, [Loading, Failed, Loaded]),  # the load itself failed: over when the batch is
])
def test_a_load_is_reported_as_over_at_the_first_step_or_at_the_end_of_the_batch(
        steps: int, expected: list[type]) -> None:
    """The client allows the load limit from Loading to Loaded, so each Loading gets one Loaded,
    and a first step that compiles still counts as loading."""
    pipe = Pipe()
    outbox = Outbox(pipe)  # a Connection only needs send() here
    request = GenerationRequest(prompt="x", model="m", width=32, height=32, steps=2,
                                sampler="euler", cfg=5.0, count=1)
    run_batch(LoadingRunner(outbox.loading, steps), [request], Inbox(1), outbox)
    outbox.settled()  # what worker_main does after every batch
    outbox.settled()  # nothing left to report
    assert [type(message) for message in pipe.sent] == expected
    assert all(message.model == "tiny" for message in pipe.sent
               if isinstance(message, Loading | Loaded))
