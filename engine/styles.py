"""Styles: AUTOMATIC1111's ``styles.csv`` (IMAGINEBOT_STYLES_FILE), so an admin's A1111 styles
work here unchanged.

A style's prompt holds ``{prompt}`` where the user's prompt goes; without it the style is
appended after a comma, exactly as A1111's ``merge_prompts`` does; the same for the negative
prompt. The merged prompts go into the request, so the job (and /show, U and V) keeps what ran
even if the file changes later; ``GenerationRequest.style`` records the name. The file is read
again only when it changes, so autocomplete stays cheap. Light: the bot imports it.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from engine.errors import RequestError
from engine.request import GenerationRequest

log = logging.getLogger(__name__)

PLACEHOLDER = "{prompt}"
_cache: dict[Path, tuple[tuple[int, int], dict[str, Style]]] = {}


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111's rule: the style around ``{prompt}``, or the style after the prompt."""
    if PLACEHOLDER in style_prompt:
        return style_prompt.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def read_styles(path: Path) -> dict[str, Style]:
    """The styles of an A1111 ``styles.csv`` by case-folded name (the first of equal names
    wins); rows without a name are skipped, as A1111 does. Cached until the file changes."""
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _cache.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    styles: dict[str, Style] = {}
    with path.open(encoding="utf-8-sig", newline="") as file:
        for row in csv.DictReader(file, skipinitialspace=True):
            name = (row.get("name") or "").strip()
            if name and name.casefold() not in styles:
                styles[name.casefold()] = Style(name, row.get("prompt") or "",
                                                row.get("negative_prompt") or "")
    _cache[path] = (stamp, styles)
    return styles


def available_styles(styles_file: Path | None) -> dict[str, Style]:
    """The configured styles; none when no file is set or it cannot be read (logged)."""
    if styles_file is None:
        return {}
    try:
        return read_styles(styles_file)
    except (OSError, UnicodeDecodeError, csv.Error):
        log.exception("cannot read the styles file %s", styles_file)
        return {}


def style_names(styles_file: Path | None) -> list[str]:
    return [style.name for style in available_styles(styles_file).values()]


def apply_style(request: GenerationRequest, name: str,
                styles_file: Path | None) -> GenerationRequest:
    """``request`` with style ``name`` merged into its prompts and recorded in ``style``."""
    style = available_styles(styles_file).get(name.strip().casefold())
    if style is None:
        raise RequestError("style", f"unknown style {name.strip()!r}" + (
            "" if styles_file is not None else ": no styles are set up"))
    negative = request.negative_prompt
    if style.negative_prompt:
        negative = merge_prompts(style.negative_prompt, negative)
    return request.model_copy(update={
        "prompt": merge_prompts(style.prompt, request.prompt), "negative_prompt": negative,
        "style": style.name})
