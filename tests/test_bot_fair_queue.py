"""The queue's fairness: users take turns, and nobody starves, whatever arrives or leaves."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.jobs.fair import FairQueue


def test_round_robin_across_users_fifo_within_each() -> None:
    queue = FairQueue()
    for user, job in [(1, "a1"), (1, "a2"), (1, "a3"), (2, "b1"), (3, "c1"), (2, "b2")]:
        queue.push(user, job)
    assert queue.order() == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert queue.position("b2") == 5
    assert [queue.pop() for _ in range(6)] == ["a1", "b1", "c1", "a2", "b2", "a3"]
    with pytest.raises(IndexError):
        queue.pop()


def test_batch_takes_compatible_heads_of_other_users_within_the_limit() -> None:
    queue = FairQueue()
    for user, job in [(1, "a1"), (1, "a2"), (2, "b1"), (3, "c1"), (4, "d1")]:
        queue.push(user, job)
    keys = {"a1": "x", "a2": "x", "b1": "y", "c1": "x", "d1": "x"}
    batch = queue.pop_batch(keys.__getitem__, limit=8, size=lambda _: 4)
    assert batch == ["a1", "c1"]  # a2 is a1's own user; d1 would exceed 8 images
    assert queue.turns() == [2, 4, 1]


def test_remove_keeps_the_rest_in_turn() -> None:
    queue = FairQueue()
    for user, job in [(1, "a1"), (2, "b1"), (2, "b2")]:
        queue.push(user, job)
    assert queue.remove("a1") and not queue.remove("a1")
    assert queue.turns() == [2] and queue.order() == ["b1", "b2"] and len(queue) == 2


def test_a_batch_put_back_in_front_leaves_as_it_was_taken() -> None:
    queue = FairQueue()
    for user, job in [(1, "a1"), (1, "a2"), (2, "b1"), (3, "c1")]:
        queue.push(user, job)
    before = queue.order()
    batch = queue.pop_batch(lambda _: "x", limit=8)
    assert batch == ["a1", "b1", "c1"]
    for job in reversed(batch):
        queue.push_front({"a": 1, "b": 2, "c": 3}[job[0]], job)
    assert queue.order() == before
    with pytest.raises(ValueError, match="queued already"):
        queue.push_front(1, "a1")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 4)), min_size=1, max_size=40))
def test_pop_order_is_round_robin(arrivals: list[tuple[int, int]]) -> None:
    """Pushed up front, jobs leave in rounds: every user once per round, in arrival order."""
    queue = FairQueue()
    per_user: dict[int, list[str]] = {}
    for n, (user, _) in enumerate(arrivals):
        job = f"{user}-{n}"
        per_user.setdefault(user, []).append(job)
        queue.push(user, job)
    popped = [queue.pop() for _ in range(len(arrivals))]
    expected = [job for jobs in itertools.zip_longest(*per_user.values()) for job in jobs if job]
    assert popped == expected


operations = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(1, 6), st.sampled_from("xyz")),
    st.tuples(st.just("batch"), st.integers(1, 4), st.just("")),
    st.tuples(st.just("cancel"), st.integers(0, 50), st.just("")),
), max_size=120)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_no_user_starves(ops: list[tuple[str, int, str]]) -> None:
    """A waiting user is served within (users ahead of them + 1) batches, whatever else happens."""
    queue = FairQueue()
    keys: dict[str, str] = {}
    deadline: dict[int, int] = {}  # user -> last batch number by which they must be served
    batches = 0
    counter = itertools.count()
    for op, number, key in ops:
        if op == "push":
            job = f"{number}-{next(counter)}"
            keys[job] = key
            queue.push(number, job)
        elif op == "cancel" and len(queue):
            queue.remove(queue.order()[number % len(queue)])
        elif op == "batch" and len(queue):
            for place, user in enumerate(queue.turns()):
                deadline.setdefault(user, batches + place + 1)
            served = queue.pop_batch(keys.__getitem__, limit=number * 2, size=lambda _: 2)
            batches += 1
            users = [int(job.split("-")[0]) for job in served]
            assert len(users) == len(set(users)), "one job per user per batch"
            for user in users:
                assert batches <= deadline.pop(user)
        for user in list(deadline):
            if queue.count(user) == 0:
                del deadline[user]  # cancelled away: nothing left to wait for
            else:
                assert batches < deadline[user], f"user {user} starved"
