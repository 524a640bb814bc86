"""Unexpected errors as members see them: one fixed sentence and a short reference.

Exception texts carry file paths, settings and library internals, none of which is for a
member's eyes, and a member can do nothing with them. So every place that tells a user about
an unexpected error calls :func:`report_unexpected`: the details go to the log under a fresh
reference, the user gets a fixed sentence with that reference, and an administrator finds the
one from the other in a screenshot.
"""

from __future__ import annotations

import logging
import re
import secrets

#: Random bytes in a reference: 8 hex digits, unique enough among one bot's log lines.
REFERENCE_BYTES = 4
#: What is said when the caller has nothing more specific.
SOMETHING_WENT_WRONG = "Sorry, something went wrong."
#: An absolute path (POSIX, home-relative or Windows drive) up to the next space or quote.
_ABSOLUTE_PATH = re.compile(r"""(?<![\w.:/\\])(?:~|[A-Za-z]:)?[/\\][^\s'"`,;]+""")


def report_unexpected(logger: logging.Logger, error: BaseException | str | None, what: str,
                      *args: object, summary: str = SOMETHING_WENT_WRONG) -> str:
    """Log ``what % args`` with ``error`` (an exception with its traceback, or the text that
    describes it) under a new reference; return the sentence for the user.

    ``summary`` is the fixed first sentence ("Sorry, this button failed."); the details never
    reach the returned text.
    """
    reference = secrets.token_hex(REFERENCE_BYTES)
    if isinstance(error, BaseException):
        logger.error("[ref %s] " + what, reference, *args, exc_info=error)
    else:
        logger.error("[ref %s] " + what + ": %s", reference, *args, error)
    return (f"{summary} The bot's administrators can look it up with the reference "
            f"`{reference}`.")


def hide_paths(text: str) -> str:
    """``text`` with each absolute path cut to its last part, for sentences meant for users
    that may quote a file ("model file /srv/models/x.safetensors" becomes "model file
    x.safetensors")."""
    return _ABSOLUTE_PATH.sub(lambda match: _last_part(match.group(0)), text)


def _last_part(path: str) -> str:
    parts = [part for part in re.split(r"[/\\]", path) if part and part != "~"]
    return parts[-1] if parts else "…"
