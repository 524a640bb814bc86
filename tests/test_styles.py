"""Styles (engine.styles): AUTOMATIC1111's styles.csv, merged as A1111 merges them."""

from __future__ import annotations

import os

import pytest

from engine.errors import RequestError
from engine.outputs import a1111_parameters, parse_parameters
from engine.request import GenerationRequest
from engine.styles import apply_style, merge_prompts, read_styles, style_names

# As A1111 writes it: a BOM-less header, quoted fields with commas, an empty row.
STYLES_CSV = '''name,prompt,negative_prompt
Film Noir,"black and white photo of {prompt}, high contrast","colour, {prompt}"
Watercolor,"watercolor, soft edges",
,"a nameless row",
"Line art",line art,"photo, shading"
'''


@pytest.fixture
def styles_file(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(STYLES_CSV, encoding="utf-8")
    return path


def test_merge_prompts_is_a1111s_rule():
    assert merge_prompts("photo of {prompt}, 35mm", "a cat") == "photo of a cat, 35mm"
    assert merge_prompts("watercolor", " a cat ") == "a cat, watercolor"
    assert merge_prompts("watercolor", "") == "watercolor"
    assert merge_prompts("", "a cat") == "a cat"


def test_a_style_wraps_or_follows_the_prompts_and_is_recorded(styles_file):
    request = GenerationRequest(prompt="a cat", negative_prompt="blurry")
    noir = apply_style(request, "film noir", styles_file)  # names are matched case-folded
    assert noir.prompt == "black and white photo of a cat, high contrast"
    assert noir.negative_prompt == "colour, blurry"
    assert noir.style == "Film Noir"
    water = apply_style(request, "Watercolor", styles_file)
    assert (water.prompt, water.negative_prompt) == ("a cat, watercolor, soft edges", "blurry")
    lines = apply_style(GenerationRequest(prompt="a cat"), "Line art", styles_file)
    assert lines.negative_prompt == "photo, shading"


def test_names_skip_nameless_rows_and_follow_changes_to_the_file(styles_file):
    assert style_names(styles_file) == ["Film Noir", "Watercolor", "Line art"]
    styles_file.write_text("name,prompt,negative_prompt\nNew,new {prompt},\n", encoding="utf-8")
    stat = styles_file.stat()
    os.utime(styles_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert list(read_styles(styles_file)) == ["new"]


def test_a_file_saved_with_a_bom_reads_the_same(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_text(STYLES_CSV, encoding="utf-8-sig")
    assert style_names(path)[0] == "Film Noir"


@pytest.mark.parametrize("configured", [True, False])
def test_an_unknown_style_is_refused_by_name(styles_file, configured):
    request = GenerationRequest(prompt="a cat")
    with pytest.raises(RequestError, match="unknown style 'Vaporwave'") as caught:
        apply_style(request, "Vaporwave", styles_file if configured else None)
    assert ("no styles are set up" in str(caught.value)) is not configured


def test_an_unreadable_file_offers_no_styles(tmp_path):
    assert style_names(tmp_path / "missing.csv") == []
    assert style_names(None) == []


def test_the_style_is_in_the_png_parameters_and_reads_back(styles_file):
    request = apply_style(GenerationRequest(prompt="a cat", steps=2, cfg=7, seed=1, width=32,
                                            height=32, sampler="euler"),
                          "Film Noir", styles_file)
    text = a1111_parameters(request, 1, {})
    assert text.startswith("black and white photo of a cat, high contrast\n")
    assert 'Style: Film Noir' in text
    parsed = parse_parameters(text)
    assert parsed["style"] == "Film Noir" and parsed["prompt"] == request.prompt
