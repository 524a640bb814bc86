"""Text as a reader sees it, so a blocked word cannot hide in how it is encoded.

:func:`fold` maps text to a key for comparison: invisible characters dropped, compatibility
forms (fullwidth, mathematical, circled, superscript letters…) and case folded away, and letters
drawn like Latin ones (Cyrillic "а", Greek "ο", small capitals, Cherokee, Armenian…) replaced
by those Latin letters, in the spirit of Unicode's confusables skeleton (UTS #39). Two texts that
look the same fold the same. The key is for comparing (and for quoting a match back to the
member who typed it); what the member typed goes on unchanged.

The look-alike table is small and written here rather than taken from a library: PyPI's
confusables packages are unmaintained or answer "is this mixed-script" rather than giving a
skeleton, and the bypasses members use are a few alphabets of Latin look-alikes.
"""

from __future__ import annotations

import itertools
import re
import string
import unicodedata

#: Characters that render as nothing but are not format characters (category Cf): the rest of
#: Unicode's Default_Ignorable_Code_Point (combining grapheme joiner, Hangul fillers, Khmer
#: inherent vowels, Mongolian and standard variation selectors).
_IGNORABLE = frozenset(itertools.chain(
    "\N{COMBINING GRAPHEME JOINER}\N{HANGUL CHOSEONG FILLER}\N{HANGUL JUNGSEONG FILLER}"
    "\N{KHMER VOWEL INHERENT AQ}\N{KHMER VOWEL INHERENT AA}\N{HANGUL FILLER}"
    "\N{HALFWIDTH HANGUL FILLER}",
    map(chr, range(0x180B, 0x1810)),  # Mongolian free variation selectors (U+180E is Cf)
    map(chr, range(0xFE00, 0xFE10)),  # variation selectors 1-16 (emoji style, …)
    map(chr, range(0xE0100, 0xE01F0)),  # variation selectors 17-256
))

#: Letters drawn like a Latin letter, by that letter. Only case-folded letters are listed, since
#: text is case-folded first (Cyrillic "А" becomes "а"); Cherokee folds to its capitals.
LOOKALIKES: dict[str, str] = {
    "a": "\N{CYRILLIC SMALL LETTER A}\N{GREEK SMALL LETTER ALPHA}\N{LATIN SMALL LETTER ALPHA}"
         "\N{LATIN LETTER SMALL CAPITAL A}\N{CHEROKEE LETTER GO}",
    "b": "\N{CYRILLIC SMALL LETTER VE}\N{CYRILLIC SMALL LETTER SOFT SIGN}"
         "\N{GREEK SMALL LETTER BETA}\N{LATIN LETTER SMALL CAPITAL B}\N{CHEROKEE LETTER YV}",
    "c": "\N{CYRILLIC SMALL LETTER ES}\N{LATIN LETTER SMALL CAPITAL C}\N{CHEROKEE LETTER TLI}",
    "d": "\N{CYRILLIC SMALL LETTER KOMI DE}\N{LATIN LETTER SMALL CAPITAL D}\N{CHEROKEE LETTER A}",
    "e": "\N{CYRILLIC SMALL LETTER IE}\N{GREEK SMALL LETTER EPSILON}\N{LATIN SMALL LETTER OPEN E}"
         "\N{LATIN LETTER SMALL CAPITAL E}\N{CHEROKEE LETTER GV}",
    "f": "\N{LATIN LETTER SMALL CAPITAL F}",
    "g": "\N{LATIN SMALL LETTER SCRIPT G}\N{LATIN LETTER SMALL CAPITAL G}"
         "\N{ARMENIAN SMALL LETTER CO}\N{CHEROKEE LETTER NAH}",
    "h": "\N{CYRILLIC SMALL LETTER SHHA}\N{CYRILLIC SMALL LETTER EN}"
         "\N{LATIN LETTER SMALL CAPITAL H}\N{ARMENIAN SMALL LETTER HO}\N{CHEROKEE LETTER MI}",
    "i": "\N{CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I}\N{GREEK SMALL LETTER IOTA}"
         "\N{LATIN SMALL LETTER DOTLESS I}\N{LATIN SMALL LETTER IOTA}"
         "\N{LATIN LETTER SMALL CAPITAL I}\N{CHEROKEE LETTER V}",
    "j": "\N{CYRILLIC SMALL LETTER JE}\N{GREEK LETTER YOT}\N{LATIN SMALL LETTER DOTLESS J}"
         "\N{LATIN LETTER SMALL CAPITAL J}\N{CHEROKEE LETTER GU}",
    "k": "\N{CYRILLIC SMALL LETTER KA}\N{GREEK SMALL LETTER KAPPA}"
         "\N{LATIN LETTER SMALL CAPITAL K}\N{CHEROKEE LETTER TSO}",
    "l": "\N{CYRILLIC SMALL LETTER PALOCHKA}\N{LATIN LETTER SMALL CAPITAL L}"
         "\N{LATIN LETTER DENTAL CLICK}\N{CHEROKEE LETTER TLE}",
    "m": "\N{CYRILLIC SMALL LETTER EM}\N{LATIN LETTER SMALL CAPITAL M}\N{CHEROKEE LETTER LU}",
    "n": "\N{CYRILLIC SMALL LETTER PE}\N{GREEK SMALL LETTER ETA}"
         "\N{LATIN LETTER SMALL CAPITAL N}\N{ARMENIAN SMALL LETTER VO}",
    "o": "\N{CYRILLIC SMALL LETTER O}\N{GREEK SMALL LETTER OMICRON}"
         "\N{LATIN LETTER SMALL CAPITAL O}\N{ARMENIAN SMALL LETTER OH}",
    "p": "\N{CYRILLIC SMALL LETTER ER}\N{GREEK SMALL LETTER RHO}"
         "\N{LATIN LETTER SMALL CAPITAL P}\N{CHEROKEE LETTER TLV}",
    "q": "\N{CYRILLIC SMALL LETTER QA}\N{LATIN LETTER SMALL CAPITAL Q}"
         "\N{ARMENIAN SMALL LETTER ZA}",
    "r": "\N{CYRILLIC SMALL LETTER GHE}\N{LATIN LETTER SMALL CAPITAL R}\N{CHEROKEE LETTER E}",
    "s": "\N{CYRILLIC SMALL LETTER DZE}\N{LATIN LETTER SMALL CAPITAL S}\N{CHEROKEE LETTER DU}",
    "t": "\N{CYRILLIC SMALL LETTER TE}\N{GREEK SMALL LETTER TAU}"
         "\N{LATIN LETTER SMALL CAPITAL T}\N{CHEROKEE LETTER I}",
    "u": "\N{GREEK SMALL LETTER UPSILON}\N{GREEK SMALL LETTER MU}"
         "\N{LATIN LETTER SMALL CAPITAL U}\N{ARMENIAN SMALL LETTER SEH}",
    "v": "\N{CYRILLIC SMALL LETTER IZHITSA}\N{GREEK SMALL LETTER NU}"
         "\N{LATIN LETTER SMALL CAPITAL V}\N{CHEROKEE LETTER DO}",
    "w": "\N{CYRILLIC SMALL LETTER WE}\N{GREEK SMALL LETTER OMEGA}"
         "\N{LATIN LETTER SMALL CAPITAL W}\N{CHEROKEE LETTER LA}",
    "x": "\N{CYRILLIC SMALL LETTER HA}\N{GREEK SMALL LETTER CHI}\N{MULTIPLICATION SIGN}",
    "y": "\N{CYRILLIC SMALL LETTER U}\N{CYRILLIC SMALL LETTER STRAIGHT U}"
         "\N{GREEK SMALL LETTER GAMMA}\N{LATIN LETTER SMALL CAPITAL Y}\N{CHEROKEE LETTER GI}",
    "z": "\N{LATIN LETTER SMALL CAPITAL Z}\N{CHEROKEE LETTER NO}",
}

#: Greek capitals drawn like a Latin capital whose small letter is drawn like another letter
#: ("Η" is an H, "η" an n). They are read as Latin only in :func:`fold`'s ``capitals`` reading,
#: so that case folding stays exact for Greek words.
CAPITALS: dict[str, str] = {
    "\N{GREEK CAPITAL LETTER ZETA}": "z", "\N{GREEK CAPITAL LETTER ETA}": "h",
    "\N{GREEK CAPITAL LETTER MU}": "m", "\N{GREEK CAPITAL LETTER NU}": "n",
    "\N{GREEK CAPITAL LETTER UPSILON}": "y",
}

#: Letter symbols in alphabet order A to Z that no normal form turns into letters.
_SYMBOL_ALPHABETS = (
    0x1F150,  # negative circled capitals: 🅐
    0x1F170,  # negative squared capitals: 🅰
    0x1F1E6,  # regional indicators: 🇦
)

#: A dot above "i" or "j" adds nothing to see; NFKD and case folding make the Turkish capital
#: "İ" an "i" with one.
_DOT_ON_DOTTED = re.compile("(?<=[ij])\N{COMBINING DOT ABOVE}")

_TRANSLATION: dict[int, str] = {
    ord(char): letter for letter, chars in LOOKALIKES.items() for char in chars} | {
    start + index: letter for start in _SYMBOL_ALPHABETS
    for index, letter in enumerate(string.ascii_lowercase)}
_CAPITALS = str.maketrans(CAPITALS)


def _visible(text: str) -> str:
    """``text`` without the characters that render as nothing (zero-width space and joiners,
    soft hyphen, byte order mark, direction marks, variation selectors…)."""
    return "".join(char for char in text
                   if char not in _IGNORABLE and unicodedata.category(char) != "Cf")


def fold(text: str, *, capitals: bool = False) -> str:
    """The comparison key of ``text``: what it looks like, in lowercase Latin where it can be,
    with each run of white space as one space.

    Compatibility forms and case go first, so the look-alikes are replaced in the one form they
    are listed in ("𝛂" is "α", "А" is "а"). Accents stay (NFKD splits them off, NFC puts them
    back), so "café" and "cafe" stay different words, as they were. With ``capitals``, the Greek
    capitals of :data:`CAPITALS` read as the Latin ones they look like; a text can be read
    both ways, a blocklist entry is folded without.
    """
    text = unicodedata.normalize("NFKD", _visible(text))
    if capitals:
        text = text.translate(_CAPITALS)
    text = unicodedata.normalize("NFKD", text.casefold()).translate(_TRANSLATION)
    text = unicodedata.normalize("NFC", _DOT_ON_DOTTED.sub("", text))
    return " ".join(text.split())
