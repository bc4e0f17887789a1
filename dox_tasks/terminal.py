"""Text from outside (file names, user names, reasons, extracted fields, error messages)
made safe for the operator's terminal.

Two dangers: rich reads ``[...]`` as markup (``--user '[/]'`` raised ``MarkupError``
and any ``[link=…]`` would style or link the output), and control characters
(``ESC [31m``, ``\\r``, C1 ``CSI``, bidirectional overrides) let a file name recolour,
overwrite or reorder what the operator reads. :func:`safe` is the one function that
fixes both; :func:`table` applies it to every cell, so tables cannot forget it.
Control characters become visible escapes (``\\x1b``) rather than vanishing, so the
operator still sees that the name was odd and can match it against the record.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .invisible import hidden


def _visible(ch: str) -> str:
    code = ord(ch)
    if code < 0x20 or 0x7F <= code <= 0x9F:  # C0, DEL, C1 (ESC, CSI, …)
        return f"\\x{code:02x}"
    if hidden(ch):  # direction marks, zero-width, separators, fillers, tags …
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return ch


def safe(value: Any, markup: bool = True, newlines: bool = False) -> str:
    """``value`` as text with control characters shown as escapes and, for rich
    (``markup=True``), markup escaped; ``markup=False`` for plain ``click.echo``.
    ``newlines=True`` keeps ``\n`` (a multi-line message of DOX's own, e.g. a list of
    definition problems); everything else that moves the cursor is escaped."""
    text = "" if value is None else str(value)
    if newlines:
        return "\n".join(safe(part, markup) for part in text.split("\n"))
    if any(_visible(ch) != ch for ch in text):
        text = "".join(_visible(ch) for ch in text)
    return escape(text) if markup else text


#: What a person sees for "no value" — never Python's ``None``, never an empty gap that
#: shifts the eye to the next column.
DASH = "–"


def shown(value: Any, markup: bool = True) -> str:
    """``value`` as :func:`safe` shows it, and None as :data:`DASH`: for human output."""
    return DASH if value is None else safe(value, markup)


def styled(value: Any, style: str) -> Text:
    """A table cell or message part in ``style`` whose content is never read as markup."""
    return Text(safe(value, markup=False), style=style)


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    title: str | None = None,
    unbroken: Collection[str] = (),
) -> Table:
    """A rich table whose cells are all made safe: None shows :data:`DASH`, a :class:`Text`
    (from :func:`styled`) keeps its style, anything else is shown through :func:`safe`.

    Long cells fold to fit the terminal, except in the ``unbroken`` columns (workflow ids):
    an id split across two lines cannot be copied, so rich narrows the other columns first.
    """
    t = Table(title=title)
    for col in columns:
        t.add_column(col, overflow="fold", no_wrap=col in unbroken)
    for row in rows:
        t.add_row(*(v if isinstance(v, Text) else shown(v) for v in row))
    return t
