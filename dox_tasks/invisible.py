"""Characters a reader cannot see — declared once for the two places that care.

A user name containing one would be a second user who looks like the first in every
record (:mod:`dox_tasks.identity` refuses such names); a file name containing one can
hide or reorder what an operator reads (:mod:`dox_tasks.terminal` shows it as an
escape). Unicode general categories cover controls, format characters (zero-width,
direction marks, tags), surrogates, private use, unassigned code points and line or
paragraph separators; Unicode's *default-ignorable* code points add letters and marks
that render as nothing (Hangul fillers, variation selectors, the combining grapheme
joiner …), and U+2800 BRAILLE PATTERN BLANK is blank in every font.
"""

from __future__ import annotations

import unicodedata

#: General categories that never show as themselves.
_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character (zero-width, direction mark or tag)",
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}

#: Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt) outside the
#: categories above, plus the braille blank.
_BLANK_RANGES = (
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x115F, 0x1160),  # HANGUL CHOSEONG/JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ/AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS
    (0x2800, 0x2800),  # BRAILLE PATTERN BLANK
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTORS
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT CONTROLS
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN/END …
    (0xE0000, 0xE0FFF),  # tags and VARIATION SELECTORS SUPPLEMENT
)


def hidden(ch: str) -> str | None:
    """What ``ch`` is if a reader cannot see it (a phrase for a message), else ``None``."""
    what = _CATEGORIES.get(unicodedata.category(ch))
    if what:
        return what
    code = ord(ch)
    if any(lo <= code <= hi for lo, hi in _BLANK_RANGES):
        return "a character that shows as nothing (a filler, blank or variation selector)"
    return None
