"""Keep the bot's files to the bot's user: they hold prompts, balances and live interaction tokens.

``imaginebot run`` sets a umask of 0o077 before anything is written, so every file and folder the
bot and its engine worker (which inherits the umask) create from then on is private: the
database and the WAL and SHM files SQLite makes beside it, the backups, the output folders and
their images. Files an older version (or ``imaginebot db upgrade`` under a looser umask) left
readable are tightened once at startup, with one log line naming each change.

Only the group and other bits are removed; the owner's bits stay as they are. Output folders
are tightened at the top only: a folder nobody else may enter keeps every image in it private,
without walking thousands of files at each start.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from bot.database import sqlite_path
from bot.settings import Settings

log = logging.getLogger(__name__)

#: No permission at all for the group or others on anything created from now on.
PRIVATE_UMASK = 0o077
#: SQLite keeps these next to a database in WAL mode (and a rollback journal otherwise).
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_paths(settings: Settings) -> list[Path]:
    """Everything that holds members' data: the database and its side files, the backup
    folder and the files in it, and the output folder. Missing paths are left out."""
    paths: list[Path] = []
    database = sqlite_path(settings.database_url)
    if database is not None:
        paths += [database, *(database.with_name(database.name + suffix)
                              for suffix in SQLITE_SIDE_FILES)]
    if settings.backup_dir.is_dir():
        paths.append(settings.backup_dir)
        paths += sorted(path for path in settings.backup_dir.iterdir()
                        if path.is_file() and not path.is_symlink())
    paths.append(settings.output_dir)
    return [path for path in paths if path.exists()]


def tighten(paths: Iterable[Path]) -> list[str]:
    """Remove the group and other bits from each path; one "path 0644 -> 0600" per change.

    A path the bot may not change (another user's file) is logged and skipped: the bot still
    starts, and the warning tells the admin what to fix.
    """
    changes: list[str] = []
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            private = mode & ~PRIVATE_UMASK
            if private != mode:
                path.chmod(private)
                changes.append(f"{path} {mode:04o} -> {private:04o}")
        except OSError as error:
            log.warning("could not make %s private: %s", path, error.strerror or error)
    return changes


def make_private(settings: Settings) -> None:
    """``imaginebot run``'s first step: private from now on, and private what exists."""
    os.umask(PRIVATE_UMASK)
    changes = tighten(private_paths(settings))
    if changes:
        log.info("made private (readable by this user only): %s", ", ".join(changes))
