"""Crash quarantine: a request that keeps killing the engine worker is refused.

A worker that dies (a segfault in an operation, host OOM) or stalls fails every job of its batch
and reloads its model, so one request that reliably does it would stop everyone, as often as its
user repeats it. Each crash counts against every request of the crashed batch, by a digest of its
parameters: a request that crashed before runs alone from then on, so a bystander is not blamed
twice, and one that reaches the limit is refused before anything is held.
"""

from __future__ import annotations

import hashlib
import json

from engine.request import GenerationRequest

#: Left out of the digest: the job id, and the seeds, which are drawn at random when the user
#: gives none, so that repeating a crashing request without a seed cannot dodge the limit.
#: Seeds decide only the noise, never what crashes a worker (sizes, model, operation, params).
UNDIGESTED = frozenset({"job_id", "seed", "variation_seed"})


def request_digest(request: GenerationRequest) -> str:
    """The same parameters give the same digest, whichever job and seeds carry them."""
    fields = request.model_dump(mode="json", exclude=set(UNDIGESTED))
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class Quarantine:
    """Crash counts per request digest, loaded from the database at start and kept current.

    The counts are read on every admission and every batch, so they live in memory; the
    database (``job_crashes``) is what makes them outlast a restart.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._crashes: dict[str, int] = {}

    def load(self, counts: dict[str, int]) -> None:
        self._crashes = dict(counts)

    def crashes(self, digest: str) -> int:
        return self._crashes.get(digest, 0)

    def refused(self, digest: str) -> bool:
        return self.crashes(digest) >= self.limit

    def suspect(self, digest: str) -> bool:
        """It crashed the worker before: it runs alone, never batched with others' jobs."""
        return self.crashes(digest) > 0

    def counted(self, digest: str, crashes: int) -> None:
        """The database's count after recording a crash."""
        self._crashes[digest] = crashes
