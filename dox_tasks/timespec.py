"""Times as operators type them: ``30m``, ``24h``, ``7d``, ``today``, or an ISO 8601 instant.

One parser for the CLI's ``--since``/``--older-than``/``--expires`` and the API's ``?since=``,
so both accept the same text. Errors are :class:`ValueError` with a sentence for a person;
each surface turns that into its own refusal (a usage error, a problem document).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

DURATION = re.compile(r"^(\d{1,9})([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
#: Longer than any retention DOX keeps; a larger span is a typo, not a question.
MAX_DURATION = timedelta(days=36500)


def parse_duration(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d`` → a timedelta."""
    m = DURATION.match(text.strip())
    if not m:
        raise ValueError(f"{text[:40]!r}: use a number and a unit, e.g. 30m, 24h, 7d")
    span = timedelta(**{UNITS[m.group(2)]: int(m.group(1))})
    if span > MAX_DURATION:
        raise ValueError(f"{text[:40]!r}: at most {MAX_DURATION.days} days")
    return span


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time: ``now`` minus a duration (``1h``), ``today`` (this UTC day's midnight),
    or an ISO 8601 date or instant (``2026-12-07``, ``2026-12-07T09:00:00Z``; without an
    offset it is UTC)."""
    text = text.strip()
    if DURATION.match(text):
        return (now or datetime.now(UTC)) - parse_duration(text)
    if text.lower() == "today":
        return (now or datetime.now(UTC)).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text[:40]!r}: give a duration (30m, 24h, 7d), today, or an ISO 8601 time"
            " (2026-12-07T09:00:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
