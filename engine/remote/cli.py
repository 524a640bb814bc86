"""``imaginebot worker``: one engine worker per GPU, taking jobs from a bot's Redis.

Model paths, dtype and caches come from this host's own IMAGINEBOT_* settings; the options
below override what differs per GPU. A worker needs neither the Discord token nor the database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from engine.settings import EngineSettings, split_list

if TYPE_CHECKING:
    from engine.remote.worker import Worker


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", metavar="URL", help="the bot's Redis, redis://[user:pw@]"
                        "host:port/db or rediss:// (default: IMAGINEBOT_ENGINE)")
    parser.add_argument("--name", help="this worker's name, unique among the bot's workers "
                        "(default: host name and process id)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (one GPU of several) or mps "
                        "(default: IMAGINEBOT_DEVICE)")
    parser.add_argument("--models", help="models to offer, comma separated, the first the "
                        "default (default: IMAGINEBOT_MODEL and IMAGINEBOT_MODELS)")
    parser.add_argument("--max-batch", type=int, metavar="K",
                        help="most images in one batch (default: IMAGINEBOT_MAX_BATCH)")


def worker_settings(args: argparse.Namespace, settings: EngineSettings) -> EngineSettings:
    """This host's settings with the command's overrides. ``cuda:N`` pins the GPU by
    CUDA_VISIBLE_DEVICES, which the GPU process inherits, so that the engine sees one GPU."""
    overrides: dict[str, object] = {}
    if args.device:
        device, _, index = args.device.partition(":")
        if device not in ("cpu", "cuda", "mps", "auto") or (index and device != "cuda"):
            raise ValueError(f"--device {args.device}: use cpu, cuda, cuda:N or mps")
        if index:
            os.environ["CUDA_VISIBLE_DEVICES"] = index
        overrides["device"] = device
    if args.models:
        models = split_list(args.models)
        if not models:
            raise ValueError("--models names no model")
        overrides["model"], overrides["models"] = models[0], models[1:]
    if args.max_batch is not None:
        if not 1 <= args.max_batch <= 64:
            raise ValueError("--max-batch must be between 1 and 64")
        overrides["max_batch"] = args.max_batch
    engine = EngineSettings.model_construct(
        **{name: getattr(settings, name) for name in EngineSettings.model_fields})
    return engine.model_copy(update=overrides)


def worker_command(args: argparse.Namespace, settings: EngineSettings,
                   operation_modules: Sequence[str] = ()) -> int:
    url = args.queue or settings.engine
    if not url.startswith(("redis://", "rediss://", "unix://")):
        print("imaginebot: worker needs --queue redis://host:port/db (or IMAGINEBOT_ENGINE)",
              file=sys.stderr)
        return 2
    try:
        settings = worker_settings(args, settings)
        from engine.remote.worker import Worker  # redis and the client: only for this command

        worker = Worker(settings, url, args.name or f"{socket.gethostname()}-{os.getpid()}",
                        operation_modules)
    except ValueError as error:
        print(f"imaginebot: {error}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(worker))


async def _serve(worker: Worker) -> int:
    from engine.errors import EngineStartError

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.drain)
    try:
        await worker.run()
    except EngineStartError as error:
        print(f"imaginebot: the engine could not start: {error}", file=sys.stderr)
        return 1
    return 0
