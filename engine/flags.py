"""Prompt flags: ``--ar 16:9 --no text --seed 7`` at the end of a prompt, as Midjourney and
Civitai users paste them.

One parser for ``/imagine`` and ``imaginebot generate``, so a prompt means the same in both.
Flags start at the first ``--name`` (or ``—name``: phones turn ``--`` into an em dash) that
follows a space; each value runs to the next flag, so ``--no`` and ``--style`` take several
words. Explicit options win over flags (:meth:`PromptFlags.apply`); an unknown flag or a bad
value is a :class:`RequestError` that names it. Light on purpose: the bot imports it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TypeVar

from engine.errors import RequestError
from engine.families import MAX_ASPECT_RATIO
from engine.request import SEED_LIMIT, GenerationRequest
from engine.samplers import A1111_NAMES, SAMPLERS

#: A flag starts after whitespace (or at the start) with two hyphens or an em dash and a letter.
FLAG_START = re.compile(r"(?<!\S)(?:--|—)(?=[A-Za-z])")
_ASPECT = re.compile(r"([1-9][0-9]{0,3}):([1-9][0-9]{0,3})")
_WHOLE = re.compile(r"[0-9]+")
#: Flag names and the field each one sets; ``--aspect`` is ``--ar`` spelled out.
FLAGS = {"ar": "aspect", "aspect": "aspect", "seed": "seed", "no": "negative",
         "steps": "steps", "cfg": "cfg", "style": "style", "sampler": "sampler"}
#: Sampler names as typed: imaginebot's own and AUTOMATIC1111's ("DPM++ 2M Karras").
_T = TypeVar("_T")
_SAMPLER_NAMES = {**{name.casefold(): name for name in SAMPLERS},
                  **{label.casefold(): name for name, label in A1111_NAMES.items()}}


@dataclass(frozen=True)
class PromptFlags:
    """A prompt split into its text and the flags at its end; None: the flag was not given."""

    prompt: str
    aspect: str | None = None
    seed: int | None = None
    negative: str | None = None
    steps: int | None = None
    cfg: float | None = None
    style: str | None = None
    sampler: str | None = None

    def apply(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` (built from explicit options) with its prompt cut before the flags and
        the flags filling what the options left unset: an explicit option wins. ``--no`` is
        added to the negative prompt. Aspect and style need the model and the styles file, so
        the caller resolves them (explicit ``aspect``/``style`` first, then these)."""
        negative = ", ".join(text for text in (request.negative_prompt, self.negative) if text)
        return request.model_copy(update={
            "prompt": self.prompt, "negative_prompt": negative,
            "seed": _first(request.seed, self.seed), "steps": _first(request.steps, self.steps),
            "cfg": _first(request.cfg, self.cfg),
            "sampler": _first(request.sampler, self.sampler)})

    def text(self) -> str:
        """The prompt with its flags written back in the parser's own spelling."""
        words = [self.prompt]
        for flag, value in (("ar", self.aspect), ("seed", self.seed), ("no", self.negative),
                            ("steps", self.steps), ("cfg", self.cfg), ("style", self.style),
                            ("sampler", self.sampler)):
            if value is not None:
                words.append(f"--{flag} {value!r}" if isinstance(value, float)
                             else f"--{flag} {value}")
        return " ".join(word for word in words if word)


def _first(explicit: _T | None, flag: _T | None) -> _T | None:
    return explicit if explicit is not None else flag


def parse_flags(text: str) -> PromptFlags:
    """Split ``text`` into its prompt and flags; RequestError for a flag it cannot use."""
    start = FLAG_START.search(text)
    if start is None:
        return PromptFlags(prompt=text.strip())
    values: dict[str, object] = {}
    for part in FLAG_START.split(text[start.start():])[1:]:
        name, *rest = part.split(None, 1)
        value = rest[0].strip() if rest else ""
        field = FLAGS.get(name.lower())
        if field is None:
            raise RequestError("flags", f"unknown flag --{name}: use --ar, --seed, --no, "
                               "--steps, --cfg, --style or --sampler")
        if field in values:
            raise RequestError("flags", f"--{name} is given twice")
        if not value:
            raise RequestError("flags", f"--{name} needs a value")
        values[field] = _value(name, field, value)
    return PromptFlags(prompt=text[:start.start()].strip(), **values)  # type: ignore[arg-type]


def _value(name: str, field: str, value: str) -> object:
    """The typed value of flag ``--name``; RequestError naming the flag when it is bad."""
    match field:
        case "aspect":
            match = _ASPECT.fullmatch(value)
            if match is None:
                raise RequestError("flags", f"--{name} must be width:height in whole numbers, "
                                   f"like 16:9, not {value!r}")
            a, b = int(match[1]), int(match[2])
            if max(a, b) > MAX_ASPECT_RATIO * min(a, b):
                raise RequestError("flags", f"--{name} {value} is too narrow: one side may be "
                                   f"at most {MAX_ASPECT_RATIO} times the other")
            return f"{a}:{b}"
        case "seed" | "steps":
            if _WHOLE.fullmatch(value) is None:
                raise RequestError("flags", f"--{name} must be a whole number, not {value!r}")
            number = int(value)
            if field == "seed" and number >= SEED_LIMIT:
                raise RequestError("flags", f"--{name} must be at most {SEED_LIMIT - 1}")
            if field == "steps" and number < 1:
                raise RequestError("flags", f"--{name} must be at least 1")
            return number
        case "cfg":
            try:
                cfg = float(value)
            except ValueError:
                cfg = math.nan
            if not math.isfinite(cfg):
                raise RequestError("flags", f"--{name} must be a number, not {value!r}")
            return cfg
        case "sampler":
            sampler = _SAMPLER_NAMES.get(value.casefold())
            if sampler is None:
                raise RequestError("flags", f"--{name} {value!r} is not a sampler; choose one "
                                   f"of {', '.join(SAMPLERS)}")
            return sampler
    return value  # --no and --style: text
