"""Prompt syntax shared with AUTOMATIC1111: LoRA tags and attention weights. No torch here.

The attention parser is A1111's ``parse_prompt_attention`` (modules/prompt_parser.py), so a
prompt pasted from A1111 or Civitai is weighted as it was there: ``(word)`` multiplies by 1.1,
``[word]`` divides by 1.1, ``(word:1.3)`` sets 1.3, brackets nest by multiplying, ``\\(`` is a
literal bracket, and ``BREAK`` starts a new 75-token chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import RequestError

#: A1111's extra-network tag; only ``lora`` is understood here.
_TAG = re.compile(r"<(\w+):([^>]+)>")
_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
#: An explicit ``(text:number)`` weight: what T5 families refuse.
_EXPLICIT_WEIGHT = re.compile(r"(?<!\\)\([^()]*:\s*[+-]?[.\d]+\s*\)")
ROUND, SQUARE = 1.1, 1 / 1.1
#: A ``BREAK`` in a parsed prompt: its weight is -1, as in A1111.
BREAK = ("BREAK", -1.0)
MAX_LORAS = 8
WEIGHT_LIMIT = 10.0


@dataclass(frozen=True)
class LoraTag:
    name: str
    weight: float


def split_loras(prompt: str) -> tuple[str, tuple[LoraTag, ...]]:
    """The prompt without its ``<lora:NAME[:WEIGHT]>`` tags, and the tags in order.

    A prompt without tags comes back unchanged, so it encodes exactly as before. Other
    extra-network tags (``<hypernet:...>``) are refused: nothing here would apply them.
    """
    tags: list[LoraTag] = []
    for match in _TAG.finditer(prompt):
        kind, args = match.group(1), match.group(2).split(":")
        if kind != "lora":
            raise RequestError("prompt", f"<{kind}:...> tags are not supported; only "
                               "<lora:NAME:WEIGHT> is")
        name = args[0].strip()
        text = args[1].strip() if len(args) > 1 else "1"
        try:
            weight = float(text)
        except ValueError:
            raise RequestError("prompt", f"the weight of LoRA {name} must be a number, "
                               f"not '{text}'") from None
        if not name:
            raise RequestError("prompt", "a <lora:NAME:WEIGHT> tag needs a name")
        if not -WEIGHT_LIMIT <= weight <= WEIGHT_LIMIT:
            raise RequestError("prompt", f"the weight of LoRA {name} must be between "
                               f"-{WEIGHT_LIMIT:g} and {WEIGHT_LIMIT:g}")
        if any(tag.name.casefold() == name.casefold() for tag in tags):
            raise RequestError("prompt", f"LoRA {name} is named twice in the prompt")
        tags.append(LoraTag(name, weight))
    if len(tags) > MAX_LORAS:
        raise RequestError("prompt", f"a prompt may use at most {MAX_LORAS} LoRAs")
    if not tags:
        return prompt, ()
    return _TAG.sub("", prompt), tuple(tags)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """A1111's ``parse_prompt_attention``: runs of text with their weights, BREAKs as
    :data:`BREAK`. Adjacent runs of equal weight are merged; "" gives ``[("", 1.0)]``."""
    runs: list[list[str | float]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] = float(run[1]) * factor

    for match in _ATTENTION.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            runs.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(runs))
        elif piece == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            multiply(round_open.pop(), _number(weight))
        elif piece == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif piece == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(piece)):
                if i > 0:
                    runs.append(list(BREAK))
                runs.append([part, 1.0])
    for start in round_open:
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    if not runs:
        runs = [["", 1.0]]
    merged: list[tuple[str, float]] = []
    for piece_text, piece_weight in ((str(t), float(w)) for t, w in runs):
        if merged and merged[-1][1] == piece_weight and (piece_text, piece_weight) != BREAK \
                and merged[-1] != BREAK:
            merged[-1] = (merged[-1][0] + piece_text, piece_weight)
        else:
            merged.append((piece_text, piece_weight))
    return merged


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise RequestError("prompt", f"prompt weight '{text}' is not a number") from None


def is_plain(runs: list[tuple[str, float]]) -> bool:
    """One run at weight 1 and no BREAK: the pipeline can encode the text itself."""
    return len(runs) == 1 and runs[0][1] == 1.0


def has_explicit_weights(text: str) -> bool:
    """Whether ``text`` has an A1111 ``(words:number)`` weight (not an escaped bracket)."""
    return _EXPLICIT_WEIGHT.search(text) is not None
