"""Fair order for queued jobs: users take turns, each user's own jobs stay first in, first out.

Pure and in-memory; :class:`bot.jobs.queue.JobQueue` rebuilds it from the database at start, so
the order survives a restart (users re-enter in the order of their oldest queued job).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator


class FairQueue:
    """Round-robin over users instead of first in, first out.

    A user joins the back of the rotation with their first queued job; whenever one of their jobs
    is taken they go to the back again, and they leave the rotation when they have none left. So a
    user with many jobs waits their turn like everyone else, and nobody starves: every batch moves
    each waiting user at least one place forward.
    """

    def __init__(self) -> None:
        self._jobs: dict[int, deque[str]] = {}
        self._turns: deque[int] = deque()
        self._owner: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._owner

    def push(self, user_id: int, job_id: str) -> None:
        if job_id in self._owner:
            raise ValueError(f"job {job_id} is queued already")
        if user_id not in self._jobs:
            self._jobs[user_id] = deque()
            self._turns.append(user_id)
        self._jobs[user_id].append(job_id)
        self._owner[job_id] = user_id

    def push_front(self, user_id: int, job_id: str) -> None:
        """Put back a job that was taken but could not run: first of its user's jobs, and its
        user first in turn, so a batch put back in reverse leaves as if never taken."""
        if job_id in self._owner:
            raise ValueError(f"job {job_id} is queued already")
        if user_id in self._jobs:
            self._turns.remove(user_id)
        else:
            self._jobs[user_id] = deque()
        self._turns.appendleft(user_id)
        self._jobs[user_id].appendleft(job_id)
        self._owner[job_id] = user_id

    def remove(self, job_id: str) -> bool:
        """Take a job out of turn (a cancellation); False if it was not queued."""
        user_id = self._owner.pop(job_id, None)
        if user_id is None:
            return False
        self._jobs[user_id].remove(job_id)
        if not self._jobs[user_id]:
            del self._jobs[user_id]
            self._turns.remove(user_id)
        return True

    def count(self, user_id: int) -> int:
        return len(self._jobs.get(user_id, ()))

    def turns(self) -> list[int]:
        """Users with queued jobs, next to be served first."""
        return list(self._turns)

    def order(self) -> list[str]:
        """The order jobs would leave in if nothing else arrived (one job per batch)."""
        rounds = [list(self._jobs[user]) for user in self._turns]
        depth = max((len(jobs) for jobs in rounds), default=0)
        return [jobs[i] for i in range(depth) for jobs in rounds if i < len(jobs)]

    def position(self, job_id: str) -> int:
        """1-based place of a queued job in :meth:`order`."""
        return self.order().index(job_id) + 1

    def pop(self) -> str:
        return self.pop_batch(lambda _: None, 1)[0]

    def first(self, runs: Callable[[str], bool] = lambda _: True) -> str | None:
        """The job to serve next among those ``runs`` accepts: users in turn, each user's jobs
        first in, first out; None if it accepts none. A job no free worker can run (its model
        is elsewhere) so waits without holding up anyone else's, or its user's other jobs."""
        return next((job_id for user in self._turns for job_id in self._jobs[user]
                     if runs(job_id)), None)

    def pop_batch(self, compatible: Callable[[str], Hashable | None], limit: int,
                  size: Callable[[str], int] = lambda _: 1,
                  runs: Callable[[str], bool] = lambda _: True) -> list[str]:
        """The next job (:meth:`first` of those ``runs`` accepts), plus compatible jobs of
        *other* users that can share its batch.

        ``compatible(job)`` returns a batch key (None: runs alone); each other user's first job
        that ``runs`` accepts joins, in turn order, if it has the head job's key and the total
        ``size`` stays within ``limit``. At most one job per user, so batching never lets one
        user jump ahead of others' turns twice. Empty if ``runs`` accepts no job.
        """
        if not self._turns:
            raise IndexError("pop from an empty FairQueue")
        head = self.first(runs)
        if head is None:
            return []
        head_user = self._owner[head]
        taken = [(head_user, head)]
        key = compatible(head)
        used = size(head)
        if key is not None:
            for user in self._turns:
                candidate = next((job_id for job_id in self._jobs[user] if runs(job_id)), None)
                if user == head_user or candidate is None:
                    continue
                need = size(candidate)
                if used + need <= limit and compatible(candidate) == key:
                    taken.append((user, candidate))
                    used += need
        for user, job_id in taken:
            self._jobs[user].remove(job_id)
            del self._owner[job_id]
            self._turns.remove(user)
            if self._jobs[user]:
                self._turns.append(user)
            else:
                del self._jobs[user]
        return [job_id for _, job_id in taken]

    def __iter__(self) -> Iterator[str]:
        return iter(self.order())
