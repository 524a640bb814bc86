"""The remote engine's wire: Redis key names, versioned JSON messages, and the Lua scripts that
fence leases.

Everything that crosses between hosts is JSON (plus raw preview bytes in their own stream
field), never pickle: unpickling what a shared broker hands over would run whatever code
anyone with write access to it put there.

A batch sent to a worker is one entry in that worker's own stream; while the worker has read
and not acknowledged it, the consumer group's pending entry is the batch's lease. The worker
renews it every heartbeat (``RENEW``), publishes each job's final event (``FINISH``) and
acknowledges it (``RELEASE``) only while the pending entry is still its own: a worker that was
stopped (SIGSTOP, a long GC, a cut network) and whose lease the bot's reaper has meanwhile
claimed must not take it back, as a plain XCLAIM would, nor deliver a result for it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.dispatch import ModelEntry, Slot
from engine.events import Failed, FailureKind, Progress
from engine.request import GenerationRequest

#: Bumped when a message changes incompatibly; a message of another version is refused.
VERSION = 1
#: The bot's consumer group on the ready stream, and the workers' group on their own streams.
READY_GROUP = "bot"
JOBS_GROUP = "workers"
#: The consumer that the bot's reaper claims expired and stranded batches as.
REAPER = "reaper"
#: Entries kept in a job's event stream (old attempts' and unread progress are trimmed).
EVENTS_MAXLEN = 64
#: Offers kept in the ready stream; idle workers re-offer every heartbeat.
READY_MAXLEN = 1000
#: Seconds an event stream, a result and a cancel flag outlive their last write.
KEEP_SECONDS = 3600

_WORKER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_FAILURE_KINDS = frozenset(FailureKind.__args__)  # type: ignore[attr-defined]


class ProtocolError(ValueError):
    """A message of another version or shape; logged and dropped, never acted on."""


def check_worker_name(name: str) -> str:
    """Worker names become key names, so they must be short and plain."""
    if not _WORKER_NAME.fullmatch(name):
        raise ValueError(f"worker name {name!r}: use 1-64 letters, digits, _ . @ or -")
    return name


@dataclass(frozen=True)
class Keys:
    """Every key of one bot, under its prefix (IMAGINEBOT_REDIS_PREFIX)."""

    prefix: str

    @property
    def ready(self) -> str:
        """Stream of slot offers from free workers."""
        return f"{self.prefix}:ready"

    @property
    def workers(self) -> str:
        """Hash: worker name -> its registration (JSON)."""
        return f"{self.prefix}:workers"

    @property
    def models(self) -> str:
        """Hash: model name -> ModelEntry (JSON); remembered while no worker is online."""
        return f"{self.prefix}:models"

    @property
    def operations(self) -> str:
        """Set of operation names workers have offered; remembered as the models are."""
        return f"{self.prefix}:operations"

    @property
    def wake(self) -> str:
        """Stream the bot adds to after a submit, to end its blocking read of event streams
        early: the next read includes the new jobs' streams."""
        return f"{self.prefix}:wake"

    @property
    def cancels(self) -> str:
        """Pub/sub channel: a job id whose cancel flag was just set (the nudge)."""
        return f"{self.prefix}:cancels"

    def heartbeat(self, worker: str) -> str:
        """Exists while the worker is alive (a TTL the worker refreshes)."""
        return f"{self.prefix}:heartbeat:{worker}"

    def jobs(self, worker: str) -> str:
        """The worker's own stream of batches."""
        return f"{self.prefix}:jobs:{worker}"

    def events(self, job_id: str) -> str:
        """The job's event stream, shared by its attempts (each event names its attempt)."""
        return f"{self.prefix}:events:{job_id}"

    def cancel(self, job_id: str) -> str:
        """The durable cancel flag of a dispatched job."""
        return f"{self.prefix}:cancel:{job_id}"

    def result(self, ref: str) -> str:
        """A result PNG in Redis (the default result store)."""
        return f"{self.prefix}:result:{ref}"


def _dumps(kind: str, body: dict[str, Any]) -> bytes:
    return json.dumps({"v": VERSION, "type": kind, **body}, separators=(",", ":")).encode()


def _loads(data: bytes | str, *kinds: str) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except ValueError as error:
        raise ProtocolError(f"not JSON: {error}") from None
    if not isinstance(message, dict) or message.get("v") != VERSION:
        raise ProtocolError(f"not a version {VERSION} message")
    if message.get("type") not in kinds:
        raise ProtocolError(f"unexpected message type {message.get('type')!r}")
    return message


def model_entry_json(entry: ModelEntry) -> bytes:
    return json.dumps({**asdict(entry), "extra": dict(entry.extra)}).encode()


def model_entry(data: bytes | str) -> ModelEntry:
    try:
        fields = json.loads(data)
        return ModelEntry(**{**fields, "extra": dict(fields.get("extra", {}))})
    except (ValueError, TypeError) as error:
        raise ProtocolError(f"bad model entry: {error}") from None


@dataclass(frozen=True)
class Registration:
    """What a worker offers, written on start and refreshed every heartbeat."""

    worker: str
    models: dict[str, ModelEntry]
    operations: list[str]
    max_batch: int
    max_pixels: int
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return _dumps("register", {
            "worker": self.worker, "models": {n: asdict(e) for n, e in self.models.items()},
            "operations": self.operations, "max_batch": self.max_batch,
            "max_pixels": self.max_pixels, "versions": self.versions})

    @classmethod
    def from_json(cls, data: bytes | str) -> Registration:
        m = _loads(data, "register")
        try:
            return cls(check_worker_name(m["worker"]),
                       {name: ModelEntry(**entry) for name, entry in m["models"].items()},
                       list(m["operations"]), int(m["max_batch"]), int(m["max_pixels"]),
                       dict(m.get("versions", {})))
        except (KeyError, TypeError, ValueError) as error:
            raise ProtocolError(f"bad registration: {error}") from None


@dataclass(frozen=True)
class Offer:
    """A free worker's slot on the ready stream: everything the queue needs to fill it."""

    worker: str
    offer: int
    models: list[str]
    loaded: list[str]
    operations: list[str]
    max_batch: int
    max_pixels: int

    def to_json(self) -> bytes:
        return _dumps("offer", asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> Offer:
        m = _loads(data, "offer")
        try:
            return cls(check_worker_name(m["worker"]), int(m["offer"]), list(m["models"]),
                       list(m["loaded"]), list(m["operations"]), int(m["max_batch"]),
                       int(m["max_pixels"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ProtocolError(f"bad offer: {error}") from None

    def slot(self) -> Slot:
        return Slot(id=f"{self.worker}#{self.offer}", worker=self.worker,
                    models=frozenset(self.models), loaded=frozenset(self.loaded),
                    operations=frozenset(self.operations), max_batch=self.max_batch,
                    max_pixels=self.max_pixels)


@dataclass(frozen=True)
class Input:
    """A file of the bot's that a job reads (an image prompt, an image to upscale or zoom into),
    carried to the worker through the result store: a worker on another host has its own
    output folder, without the bot's files in it."""

    #: The request param whose value is the file's path, or ``source_image`` (whose hash
    #: names the file, so it needs no rewriting).
    name: str
    #: The file's path under the output folder (POSIX, relative): the same on either side.
    path: str
    #: Where its bytes wait in the result store (``input_ref``).
    ref: str
    sha256: str


@dataclass(frozen=True)
class BatchJob:
    request: GenerationRequest
    attempt: int
    inputs: tuple[Input, ...] = ()


def batch_json(jobs: list[BatchJob]) -> bytes:
    return _dumps("batch", {"jobs": [
        {"attempt": job.attempt, "request": job.request.model_dump(mode="json"),
         "inputs": [asdict(item) for item in job.inputs]}
        for job in jobs]})


def parse_batch(data: bytes | str) -> list[BatchJob]:
    m = _loads(data, "batch")
    try:
        return [BatchJob(GenerationRequest.model_validate(job["request"]), int(job["attempt"]),
                         tuple(Input(str(i["name"]), str(i["path"]), str(i["ref"]),
                                     str(i["sha256"])) for i in job.get("inputs", [])))
                for job in m["jobs"]]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ProtocolError(f"bad batch: {error}") from None


@dataclass(frozen=True)
class RemoteImage:
    """One result image: where it waits in the result store, and what it is."""

    ref: str
    seed: int
    width: int
    height: int


@dataclass(frozen=True)
class RemoteDone:
    """A worker's Done: its images are result-store refs, not paths on the worker's disk."""

    job_id: str
    #: The kind of result store the images wait in (``redis`` or ``file``).
    store: str
    images: list[RemoteImage]
    grid: str | None
    seconds: float
    metadata: dict[str, Any]


RemoteEvent = Progress | RemoteDone | Failed


def result_ref(job_id: str, attempt: int, name: str) -> str:
    """Where one result file of one attempt lives, in either result store."""
    return f"{job_id}/{attempt}/{name}"


def input_ref(job_id: str, attempt: int, index: int) -> str:
    """Where the bytes of one input file of one attempt wait, beside its results."""
    return result_ref(job_id, attempt, f"input-{index}")


def check_input_ref(ref: str, job_id: str, attempt: int) -> str:
    """A ref from a batch must name an input of this very job and attempt, nothing else."""
    name = ref.removeprefix(result_ref(job_id, attempt, ""))
    if name == ref or not re.fullmatch(r"input-[0-9]{1,4}", name):
        raise ProtocolError(f"input {ref!r} is not one of job {job_id} attempt {attempt}")
    return ref


def check_ref(ref: str, job_id: str, attempt: int) -> str:
    """A ref from a message must name a file of this very attempt, nothing else."""
    prefix = result_ref(job_id, attempt, "")
    name = ref.removeprefix(prefix)
    if not ref.startswith(prefix) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}\.png", name):
        raise ProtocolError(f"result {ref!r} is not a file of job {job_id} attempt {attempt}")
    return ref


def event_fields(attempt: int, event: RemoteEvent) -> dict[str, bytes]:
    """A stream entry: ``m`` the JSON message, ``p`` a preview's raw image bytes."""
    fields: dict[str, bytes] = {}
    if isinstance(event, Progress):
        body: dict[str, Any] = {"step": event.step, "total": event.total}
        kind = "progress"
        if event.preview is not None:
            fields["p"] = event.preview
    elif isinstance(event, RemoteDone):
        body = {"store": event.store, "images": [asdict(image) for image in event.images],
                "grid": event.grid, "seconds": event.seconds, "metadata": event.metadata}
        kind = "done"
    else:
        body = {"reason": event.reason, "kind": event.kind}
        kind = "failed"
    fields["m"] = _dumps(kind, {"job_id": event.job_id, "attempt": attempt, **body})
    return fields


def parse_event(fields: dict[bytes, bytes]) -> tuple[int, RemoteEvent]:
    """(attempt, event) of a stream entry written by :func:`event_fields`."""
    m = _loads(fields.get(b"m", b""), "progress", "done", "failed")
    try:
        job_id, attempt = str(m["job_id"]), int(m["attempt"])
        if m["type"] == "progress":
            return attempt, Progress(job_id, int(m["step"]), int(m["total"]), fields.get(b"p"))
        if m["type"] == "done":
            images = [RemoteImage(check_ref(str(i["ref"]), job_id, attempt), int(i["seed"]),
                                  int(i["width"]), int(i["height"])) for i in m["images"]]
            grid = None if m["grid"] is None else check_ref(str(m["grid"]), job_id, attempt)
            return attempt, RemoteDone(job_id, str(m["store"]), images, grid,
                                       float(m["seconds"]),
                                       dict(m["metadata"]))
        if m["kind"] not in _FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {m['kind']!r}")
        return attempt, Failed(job_id, str(m["reason"]), m["kind"])
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"bad event: {error}") from None


# -- Lua: leases that a zombie cannot take back -------------------------------------------------

_OWNS = """
local function owns(stream, group, consumer, id)
  local ok, entry = pcall(redis.call, 'XPENDING', stream, group, id, id, 1)
  return ok and #entry == 1 and entry[1][2] == consumer
end
"""

#: KEYS: the worker's stream. ARGV: group, consumer, entry id. 1 if renewed, 0 if not its own.
#: Only the owner's XCLAIM (which resets the entry's idle time) runs: a plain XCLAIM would
#: hand an entry the reaper had already reclaimed back to a zombie.
RENEW = _OWNS + """
if not owns(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

#: KEYS: the worker's stream, the job's event stream. ARGV: group, consumer, entry id, maxlen,
#: seconds to keep, the message. Publishes a final event only while the lease is the worker's.
FINISH = _OWNS + """
if not owns(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '*', 'm', ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""

#: KEYS: the worker's stream. ARGV: group, consumer, entry id. Ends the lease (acknowledges and
#: deletes the entry, so that an entry in a stream always means a batch still to run).
RELEASE = _OWNS + """
if not owns(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""
