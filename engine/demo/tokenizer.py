"""A CLIP BPE tokenizer whose merges turn every caption word into exactly one token.

Real CLIP's 49k-entry vocabulary would dwarf the demo model; this one holds the 512 CLIP
byte symbols (so any text still tokenizes), one merge chain per caption word and the two
special tokens, written in the exact vocab.json/merges.txt format ``CLIPTokenizer`` reads.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def byte_symbols() -> list[str]:
    """CLIP's reversible byte -> printable unicode table, in CLIP's order, so any text tokenizes."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def _bpe(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """Apply merges the way CLIP does: always the lowest-ranked adjacent pair first."""
    while len(word) > 1:
        pairs = [(ranks.get(pair, len(ranks) + 1), i)
                 for i, pair in enumerate(itertools.pairwise(word))]
        rank, i = min(pairs)
        if rank > len(ranks):
            break
        first, second = word[i], word[i + 1]
        merged: list[str] = []
        j = 0
        while j < len(word):
            if j < len(word) - 1 and word[j] == first and word[j + 1] == second:
                merged.append(first + second)
                j += 2
            else:
                merged.append(word[j])
                j += 1
        word = tuple(merged)
    return word


def build_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Merges that make each word a single ``word</w>`` token.

    A new merge always goes last (lowest priority), so it can never fire inside a word
    that already merges completely: there some earlier merge is always applicable.
    """
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    pending = sorted(set(words))
    changed = True
    while changed:
        changed = False
        for w in pending:
            pieces = _bpe((*w[:-1], w[-1] + "</w>"), ranks)
            if len(pieces) > 1:
                ranks[(pieces[0], pieces[1])] = len(merges)
                merges.append((pieces[0], pieces[1]))
                changed = True
    return merges


def write_tokenizer(folder: Path, words: Iterable[str], max_length: int) -> int:
    """Write a CLIPTokenizer folder; returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = build_merges(words)
    vocab_list += ["".join(pair) for pair in merges]
    vocab_list += [BOS, EOS]
    vocab = {token: index for index, token in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "errors": "replace",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2),
                                                    encoding="utf-8")
    return len(vocab)
