"""Prompts into what the pipeline takes: its own text for plain prompts, embeddings otherwise.

A prompt with no weights that fits one 77-token window goes to the pipeline as text, exactly as
before. Weighted or longer prompts on CLIP families (SD 1.x, 2.x, XL) are encoded here as
AUTOMATIC1111 does (modules/sd_hijack_clip.py): 75-token chunks, broken at a comma within the
last 20 tokens, each framed by BOS and EOS and padded as the tokenizer pads, encoded alone by
the pipeline's own text encoders, multiplied by the tokens' weights and scaled back to the
chunk's original mean, then concatenated. SDXL's pooled embedding is the first chunk's. The
prompt and the negative prompt are padded to the same number of chunks with the empty prompt's
chunk (A1111's "pad prompt/negative prompt to be same length").

T5 families take the prompt as text; SD3 reads up to 512 T5 tokens when a prompt needs more than
its default 256.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch

from engine.prompting.library import CLIP_FAMILIES
from engine.prompting.syntax import BREAK, is_plain, parse_attention, split_loras
from engine.request import GenerationRequest

CHUNK = 75
COMMA_BACKTRACK = 20
#: The longest T5 input the pipelines accept; SD3 uses 256 unless a prompt needs more.
T5_LIMIT = 512
_T5_DEFAULTS = {"sd3": 256}

Chunk = tuple[list[int], list[float]]


def prompt_texts(request: GenerationRequest) -> tuple[str, str]:
    """The prompt without its LoRA tags, and the negative prompt."""
    return split_loras(request.prompt)[0], request.negative_prompt


class PromptEncoder:
    """Encodes the prompts of one pipeline; one per batch (it caches the empty chunk)."""

    def __init__(self, pipeline: Any, family: str) -> None:
        self.pipe = pipeline
        self.family = family
        self.clip = family in CLIP_FAMILIES
        self.pairs = [(tokenizer, encoder) for tokenizer, encoder in (
            (getattr(pipeline, "tokenizer", None), getattr(pipeline, "text_encoder", None)),
            (getattr(pipeline, "tokenizer_2", None), getattr(pipeline, "text_encoder_2", None)),
        ) if tokenizer is not None and encoder is not None] if self.clip else []
        self._empty: list[torch.Tensor] | None = None

    # -- what a request needs --------------------------------------------------------------

    def _convert(self, text: str, tokenizer: Any) -> str:
        """Multi-vector embeddings' tokens expanded, as diffusers' encode_prompt does."""
        convert = getattr(self.pipe, "maybe_convert_prompt", None)
        return str(convert(text, tokenizer)) if convert is not None else text

    def _chunks(self, text: str, tokenizer: Any) -> list[Chunk]:
        """A1111's ``tokenize_line``: the weighted text in framed 77-token chunks."""
        runs = parse_attention(text)
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        comma = tokenizer.get_vocab().get(",</w>")
        chunks: list[Chunk] = []
        tokens: list[int] = []
        weights: list[float] = []
        last_comma = -1

        def close() -> None:
            nonlocal tokens, weights, last_comma
            fill = CHUNK - len(tokens)
            # EOS, then the tokenizer's padding, as diffusers' max_length padding has it
            framed = [bos, *tokens, eos, *([pad] * fill)]
            chunks.append((framed, [1.0, *weights, *([1.0] * (fill + 1))]))
            tokens, weights, last_comma = [], [], -1

        pieces = [(self._convert(run, tokenizer), weight) for run, weight in runs]
        ids = tokenizer([piece for piece, _ in pieces], truncation=False,
                        add_special_tokens=False).input_ids
        for piece_ids, (piece, weight) in zip(ids, pieces, strict=True):
            if (piece, weight) == BREAK:
                close()
                continue
            for token in piece_ids:
                if token == comma:
                    last_comma = len(tokens)
                elif (len(tokens) == CHUNK and last_comma != -1
                      and len(tokens) - last_comma <= COMMA_BACKTRACK):
                    moved, moved_weights = tokens[last_comma + 1:], weights[last_comma + 1:]
                    tokens, weights = tokens[:last_comma + 1], weights[:last_comma + 1]
                    close()
                    tokens, weights = moved, moved_weights
                if len(tokens) == CHUNK:
                    close()
                tokens.append(token)
                weights.append(weight)
        if tokens or not chunks:
            close()
        return chunks

    def _plain(self, text: str) -> bool:
        if not is_plain(parse_attention(text)):
            return False
        return all(len(tokenizer(self._convert(text, tokenizer), truncation=False,
                                 add_special_tokens=False).input_ids) <= CHUNK
                   for tokenizer, _ in self.pairs)

    def _t5_window(self, texts: Sequence[str]) -> int | None:
        default = _T5_DEFAULTS.get(self.family)
        tokenizer = getattr(self.pipe, "tokenizer_3", None) or getattr(self.pipe, "tokenizer_2",
                                                                       None)
        if default is None or tokenizer is None:
            return None
        longest = max(len(tokenizer(text, truncation=False).input_ids) for text in texts)
        return T5_LIMIT if longest > default else None

    def group_key(self, request: GenerationRequest) -> Hashable:
        """Requests with one key are encoded alike and share a pipeline call: plain text, or
        the same number of chunks; for SD3, the same T5 window."""
        texts = prompt_texts(request)
        if not self.clip:
            return ("t5", self._t5_window(texts))
        if all(self._plain(text) for text in texts):
            return ("plain",)
        return ("chunks", max(len(self._chunks(text, tokenizer))
                              for text in texts for tokenizer, _ in self.pairs))

    # -- encoding --------------------------------------------------------------------------

    def _encode_chunk(self, chunk: Chunk, tokenizer: Any, encoder: Any,
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One chunk through one encoder: (hidden states, pooled or None), as encode_prompt."""
        tokens, weights = chunk
        device = self.pipe._execution_device
        ids = torch.tensor([tokens], device=device)
        sdxl = len(self.pairs) == 2
        if sdxl:
            output = encoder(ids, output_hidden_states=True)
            pooled = output[0] if output[0].ndim == 2 else None
            hidden = output.hidden_states[-2]
        else:
            mask = None
            if getattr(encoder.config, "use_attention_mask", False):
                length = tokens.index(tokenizer.eos_token_id) + 1
                mask = torch.tensor([[1] * length + [0] * (len(tokens) - length)], device=device)
            hidden, pooled = encoder(ids, attention_mask=mask)[0], None
        hidden = hidden.to(dtype=encoder.dtype)
        if any(weight != 1.0 for weight in weights):
            original = hidden.mean()
            hidden = hidden * torch.tensor(weights, dtype=hidden.dtype,
                                           device=hidden.device)[None, :, None]
            hidden = hidden * (original / hidden.mean())
        return hidden, pooled

    def _encode(self, text: str, chunks: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``text`` as ``chunks`` chunks (padded with the empty prompt's), and its pooled
        embedding (SDXL) from its first chunk."""
        per_encoder: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for index, (tokenizer, encoder) in enumerate(self.pairs):
            encoded = [self._encode_chunk(chunk, tokenizer, encoder)
                       for chunk in self._chunks(text, tokenizer)]
            if pooled is None:
                pooled = encoded[0][1]
            hidden = [h for h, _ in encoded]
            hidden += [self._empty_chunk(index)] * (chunks - len(hidden))
            per_encoder.append(torch.cat(hidden, dim=1))
        return torch.cat(per_encoder, dim=-1), pooled

    def _empty_chunk(self, index: int) -> torch.Tensor:
        if self._empty is None:
            self._empty = [self._encode_chunk(self._chunks("", tokenizer)[0], tokenizer,
                                              encoder)[0]
                           for tokenizer, encoder in self.pairs]
        return self._empty[index]

    @torch.no_grad()
    def kwargs(self, batch: Sequence[GenerationRequest], key: Hashable) -> dict[str, Any]:
        """The prompt arguments of one pipeline call for requests of one ``group_key``."""
        prompts: list[str] = []
        negatives: list[str] = []
        for request in batch:
            prompt, negative = prompt_texts(request)
            prompts += [prompt] * request.count
            negatives += [negative] * request.count
        assert isinstance(key, tuple)
        if key[0] != "chunks":
            parsed = ([self._parsed(text) for text in prompts],
                      [self._parsed(text) for text in negatives])
            kwargs: dict[str, Any] = {"prompt": parsed[0]}
            if self.family not in ("flux", "flux-schnell"):
                # An empty negative prompt is None, as in diffusers' own default: SDXL then
                # uses zero embeddings instead of encoding "".
                kwargs["negative_prompt"] = parsed[1] if any(negatives) else None
            if key[0] == "t5" and key[1] is not None:
                kwargs["max_sequence_length"] = key[1]
            return kwargs
        chunks = int(key[1])
        sdxl = len(self.pairs) == 2
        encoded = [self._encode(text, chunks) for text in prompts]
        kwargs = {"prompt_embeds": torch.cat([embeds for embeds, _ in encoded])}
        if sdxl:
            kwargs["pooled_prompt_embeds"] = torch.cat([pooled for _, pooled in encoded
                                                        if pooled is not None])
        if not sdxl or any(negatives):
            # SD 1.x encodes "" for no negative prompt; SDXL uses zeros, which diffusers
            # makes itself when no negative embeddings are given.
            encoded = [self._encode(text, chunks) for text in negatives]
            kwargs["negative_prompt_embeds"] = torch.cat([embeds for embeds, _ in encoded])
            if sdxl:
                kwargs["negative_pooled_prompt_embeds"] = torch.cat(
                    [pooled for _, pooled in encoded if pooled is not None])
        return kwargs

    def _parsed(self, text: str) -> str:
        """A plain prompt's text as A1111 reads it: ``(word:1.0)`` is "word", ``\\(`` is "(".

        Only on CLIP families: T5 families take the prompt as written.
        """
        return parse_attention(text)[0][0] if self.clip else text
