"""User names: one normal form for every per-user decision.

Quotas, duplicate detection, idempotency keys and the records are all keyed by the
submitting user. If ``Billing``, ``billing `` and full-width ``ｂilling`` were three
users, anyone could reset their daily quota by re-spelling their name, and the
composed and decomposed spellings of ``bïlling`` would count as two people.

The normal form: Unicode NFKC (compatibility characters such as full-width letters
become their plain forms; composed and decomposed accents become one), case folded,
NFKC again (case folding can un-normalise), surrounding white space removed and runs
of white space inside made one space. Accents are kept: ``josé`` and ``jose`` stay
two users. A name containing a character nobody can see (:mod:`dox_tasks.invisible`:
controls, zero-width and direction marks, fillers, variation selectors …) is refused
rather than cleaned — such a name is a mistake or a disguise, and silently dropping
the invisible part would merge two names that *look* different in every log.

What the caller sent is kept beside it as ``user_display``.
"""

from __future__ import annotations

import unicodedata

from .errors import SubmissionError
from .invisible import hidden

MAX_USER_LENGTH = 200


def normalise_user(name: str) -> str:
    """The normal form of a user name; raises :class:`SubmissionError` for a bad name."""
    if not isinstance(name, str):
        raise SubmissionError("user must be a text name")
    for position, char in enumerate(name, 1):
        what = hidden(char)
        if what:
            raise SubmissionError(
                f"user name refused: character {position} is {what} (U+{ord(char):04X});"
                " send the name without it"
            )
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    normal = " ".join(folded.split())  # trimmed, and runs of (any) white space are one space
    if not normal:
        raise SubmissionError("user must be a non-empty name")
    if len(normal) > MAX_USER_LENGTH or len(name) > MAX_USER_LENGTH:
        raise SubmissionError(f"user must be a name of at most {MAX_USER_LENGTH} characters")
    return normal
