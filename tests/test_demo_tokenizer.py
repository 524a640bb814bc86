"""The demo model's CLIP BPE tokenizer files: one token per caption word."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import CLIPTokenizer

from engine.demo.dataset import vocabulary
from engine.demo.tokenizer import EOS, build_merges, write_tokenizer


def test_every_caption_word_is_one_token(tmp_path):
    write_tokenizer(tmp_path, vocabulary(), max_length=20)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path))
    for word in vocabulary():
        tokens = tokenizer.tokenize(word)
        assert tokens == [word + "</w>"], (word, tokens)
    ids = tokenizer("A large red circle, white background", padding="max_length",
                    max_length=20).input_ids
    assert len(ids) == 20
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:9]) == [
        "a</w>", "large</w>", "red</w>", "circle</w>", ",</w>", "white</w>", "background</w>",
        EOS]


def test_unknown_words_still_tokenize(tmp_path):
    write_tokenizer(tmp_path, vocabulary(), max_length=20)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path))
    tokens = tokenizer.tokenize("a zebra")
    assert tokens[0] == "a</w>"
    assert "".join(tokens[1:]) == "zebra</w>"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghij", min_size=1, max_size=8), min_size=1,
                max_size=15))
def test_merges_make_any_word_set_single_tokens(tmp_path_factory, words):
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(folder, words, max_length=20)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    for word in words:
        assert tokenizer.tokenize(word) == [word + "</w>"]
    assert len(build_merges(words)) <= sum(len(w) for w in set(words))
