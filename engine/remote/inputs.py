"""Input files that travel with a batch: what a job reads from the bot's output folder.

An image prompt (``source_image``, the hash naming ``output_dir/sources/<sha>.png``), the image
an upscale enlarges or a zoom crops (a param holding an absolute path under the bot's output
folder): a worker on another host has its own output folder, without them. So the bot uploads
each such file to the result store, keyed by job and attempt and expiring as results do (never
inside a stream entry), and lists it in the batch; the worker puts it at the same relative path
under its own output folder, checked against its sha256, and points the param at it. Plugins and
the engine core stay unaware: they read a file under their output folder, as on one host.

The batch comes from a shared broker, so the worker trusts none of it: a path that climbs out of
its output folder, a ref of another job, or bytes that do not match their hash fail the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path, PurePosixPath

from engine.errors import RequestError
from engine.image_prompt import source_path
from engine.remote.protocol import (
    BatchJob,
    Input,
    ProtocolError,
    check_input_ref,
    input_ref,
)
from engine.remote.results import ResultStore
from engine.request import GenerationRequest

SOURCE_IMAGE = "source_image"


class InputError(Exception):
    """An input cannot be put in place; its job fails ``invalid`` with this one sentence."""


def find_inputs(request: GenerationRequest, output_dir: Path) -> list[tuple[str, Path, str]]:
    """(name, file, relative path) of each file under ``output_dir`` the request reads: its
    image prompt, and every string param that is the absolute path of an existing file there.
    Resolved first, so a symlink out of the output folder is no input (the engine refuses to
    read it, too)."""
    root = output_dir.resolve()
    candidates: list[tuple[str, str | Path]] = [
        (name, value) for name, value in request.params.items()
        if isinstance(value, str) and os.path.isabs(value)]
    if request.source_image is not None:
        # Not a digest: the worker refuses the request as the local engine would.
        with contextlib.suppress(RequestError):
            candidates.append((SOURCE_IMAGE, source_path(output_dir, request.source_image)))
    found = []
    for name, value in candidates:
        try:
            path = Path(value).resolve()
        except (OSError, ValueError):  # a NUL byte, a symlink loop
            continue
        if path.is_relative_to(root) and path.is_file():
            found.append((name, path, path.relative_to(root).as_posix()))
    return found


async def upload_inputs(store: ResultStore, job: BatchJob, output_dir: Path) -> BatchJob:
    """``job`` with its inputs listed, their bytes in the store. A file that vanished since it
    was found is left out: the worker then does what the engine does without it."""
    inputs: list[Input] = []
    for name, path, relative in await asyncio.to_thread(find_inputs, job.request, output_dir):
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            continue
        ref = input_ref(job.request.job_id, job.attempt, len(inputs))
        await store.put(ref, data)
        inputs.append(Input(name, relative, ref, hashlib.sha256(data).hexdigest()))
    return replace(job, inputs=tuple(inputs))


def target(output_dir: Path, relative: str) -> Path:
    """Where an input goes under ``output_dir``; InputError for a path that would leave it
    (absolute, ``..``, or through a symlink inside it)."""
    pure = PurePosixPath(relative)
    parts = pure.parts
    if not parts or pure.is_absolute() or ".." in parts or "\0" in relative:
        raise InputError(f"this job's input {relative!r} is not a plain path under the "
                         "output folder")
    root = output_dir.resolve()
    path = root.joinpath(*parts)
    # A symlinked folder inside it could lead out; the file itself is replaced, not followed.
    if not path.parent.resolve().is_relative_to(root):
        raise InputError(f"this job's input {relative!r} would leave the output folder")
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """Whole or not at all: a reader never sees half a file, even if this process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.replace(path)


async def fetch_inputs(job: BatchJob, get: Callable[[str], Awaitable[bytes | None]],
                       output_dir: Path, placed: list[Path]) -> GenerationRequest:
    """Put the job's inputs under ``output_dir`` (appending each file to ``placed``, for the
    caller to remove after the batch) and return the request whose params name them there."""
    request = job.request
    params = dict(request.params)
    for item in job.inputs:
        if item.name == SOURCE_IMAGE:
            if request.source_image is None:
                raise InputError("this job lists an image prompt it does not have")
        elif not isinstance(params.get(item.name), str):
            raise InputError(f"this job lists an input for {item.name!r}, which is none of its "
                             "path params")
        path = await asyncio.to_thread(target, output_dir, item.path)
        try:
            ref = check_input_ref(item.ref, request.job_id, job.attempt)
        except ProtocolError as error:
            raise InputError(str(error)) from None
        data = await get(ref)
        if data is None:
            raise InputError("this job's input file expired before a worker fetched it")
        if hashlib.sha256(data).hexdigest() != item.sha256:
            raise InputError("this job's input file does not match its sha256")
        await asyncio.to_thread(write_atomically, path, data)
        placed.append(path)
        if item.name != SOURCE_IMAGE:
            params[item.name] = str(path)
    return request.model_copy(update={"params": params})
