"""User names: one normal form for every per-user decision.

Quotas, duplicate detection, idempotency keys and the records are all keyed by the
submitting user. If ``Billing``, ``billing `` and full-width ``ｂilling`` were three
users, anyone could reset their daily quota by re-spelling their name, and the
composed and decomposed spellings of ``bïlling`` would count as two people.

The normal form: Unicode NFKC (compatibility characters such as full-width letters
become their plain forms; composed and decomposed accents become one), case folded,
surrounding white space removed, NFKC again (case folding can un-normalise).
Accents are kept: ``josé`` and ``jose`` stay two users. A name containing control,
format (zero-width and direction marks), surrogate, private-use, unassigned or
line/paragraph-separator characters is refused rather than cleaned — such a name
is a mistake or a disguise, and silently dropping the invisible part would merge
two names that *look* different in every log.

What the caller sent is kept beside it as ``user_display``.
"""

from __future__ import annotations

import unicodedata

from .errors import SubmissionError

MAX_USER_LENGTH = 200
#: Unicode general categories refused anywhere in a user name.
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character (zero-width or direction mark)",
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def normalise_user(name: str) -> str:
    """The normal form of a user name; raises :class:`SubmissionError` for a bad name."""
    if not isinstance(name, str):
        raise SubmissionError("user must be a text name")
    for position, char in enumerate(name, 1):
        what = _REFUSED_CATEGORIES.get(unicodedata.category(char))
        if what:
            raise SubmissionError(
                f"user name refused: character {position} is {what} (U+{ord(char):04X});"
                " send the name without it"
            )
    normal = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold()).strip()
    if not normal:
        raise SubmissionError("user must be a non-empty name")
    if len(normal) > MAX_USER_LENGTH or len(name) > MAX_USER_LENGTH:
        raise SubmissionError(f"user must be a name of at most {MAX_USER_LENGTH} characters")
    return normal
