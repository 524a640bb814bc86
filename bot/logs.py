"""The one logging format every entry point uses."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True)
    # discord.py logs every gateway event at DEBUG; keep it at INFO unless asked.
    if level.upper() != "DEBUG":
        logging.getLogger("discord").setLevel(logging.INFO)
