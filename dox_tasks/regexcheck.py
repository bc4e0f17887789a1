r"""A warning, not a proof: spot template regexes that can backtrack badly over whitespace.

Template rules and fields are searched (``re.search`` with MULTILINE and IGNORECASE)
over up to :data:`dox_tasks.templates.MAX_TEXT` characters of text that whoever sent
the document controls. Three shapes turn a long run of whitespace into quadratic or
exponential work, and each is easy to write by accident:

``leading``
    an unbounded quantifier over whitespace that can be the first thing the pattern
    consumes and that no anchor pins down: ``\s*invoice``, or ``^\s*…`` — ``^`` matches
    after every newline and ``\s`` crosses newlines, so the search retries at every
    line of a blank run and each retry walks the rest of it. This is the shape that let
    16,000 newlines cost 16 s (``^\s*(tax\s+)?invoice\s*$``). ``^[ \t]*`` is safe: the
    runs that the retries walk no longer overlap. A possessive ``\s*+`` does not help
    here, since the retries are the search's, not the quantifier's.
``adjacent``
    two unbounded quantifiers that can both match whitespace, with only optional items
    between them (``\s*:?\s*``, ``\s+.*``): a failing match tries every split of the run.
    Write ``\s*+(?::\s*+)?`` instead — a possessive first quantifier gives nothing back.
``nested``
    an unbounded repeat of a group that contains an unbounded quantifier over whitespace
    (``(\s+)*``, ``(\s*\w+)*``): exponential.

How: the pattern's parse tree from CPython's own regex parser (``re._parser``;
``sre_parse`` before 3.11), not a textual scan (which would trip over escapes and
character classes). That module is internal, so every use is wrapped: if its shape
changes the check returns nothing rather than failing validation — the sandbox's CPU
limit is the real guard, this only tells authors early — and ``tests/test_recognize_budget.py``
pins the warnings so an upgrade that silences them is noticed. False positives are
possible (``(a\s*)+`` is flagged though each round must start with ``a``); a warning
never fails ``dox defs validate``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence
from typing import Any


def _internals() -> tuple[Any, Any]:
    """CPython's regex constants and parser: ``re._constants``/``re._parser`` (3.11+), else sre_*."""
    for constants, parser in (("re._constants", "re._parser"), ("sre_constants", "sre_parse")):
        try:
            return importlib.import_module(constants), importlib.import_module(parser)
        except ImportError:  # pragma: no cover - another Python
            continue
    return None, None  # pragma: no cover - the check then says nothing


_c, _p = _internals()

#: A repeat whose maximum is above this counts as unbounded (``{0,100000}`` is as bad as ``*``).
UNBOUNDED = 100
#: Whitespace we test character classes against.
_WS = (" ", "\t", "\n", "\u00a0")
_NEWLINE = "\n"

Item = tuple[Any, Any]


def _names(*names: str) -> frozenset[Any]:
    """Opcodes by name, skipping those this Python does not have (e.g. possessive before 3.11)."""
    return frozenset(getattr(_c, n) for n in names if hasattr(_c, n))


_REPEATS = _names("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
_POSSESSIVE = _names("POSSESSIVE_REPEAT")
_ZERO_WIDTH = _names("AT", "ASSERT", "ASSERT_NOT", "GROUPREF", "GROUPREF_EXISTS", "GROUPREF_IGNORE")
#: Anchors after which a leading quantifier can start only at one place per run, or per
#: line when it cannot cross a newline.
_ALWAYS_PINS = _names("AT_BEGINNING_STRING", "AT_END_STRING", "AT_BOUNDARY")
_LINE_PINS = _names("AT_BEGINNING", "AT_END", "AT_BEGINNING_LINE", "AT_END_LINE")
_CATEGORY_RE = {
    getattr(_c, name): re.compile(esc)
    for name, esc in (
        ("CATEGORY_SPACE", r"\s"),
        ("CATEGORY_NOT_SPACE", r"\S"),
        ("CATEGORY_DIGIT", r"\d"),
        ("CATEGORY_NOT_DIGIT", r"\D"),
        ("CATEGORY_WORD", r"\w"),
        ("CATEGORY_NOT_WORD", r"\W"),
        ("CATEGORY_LINEBREAK", r"\n"),
        ("CATEGORY_NOT_LINEBREAK", r"[^\n]"),
    )
    if hasattr(_c, name)
}


def _char_matches(op: Any, av: Any, ch: str, dotall: bool) -> bool:
    """Whether a one-character item (literal, ``.``, class) matches ``ch``."""
    name = str(op)
    if name == "LITERAL":
        return bool(av == ord(ch))
    if name == "NOT_LITERAL":
        return bool(av != ord(ch))
    if name == "ANY":
        return ch != _NEWLINE or dotall
    if name == "IN":
        negate = False
        hit = False
        for sop, sav in av:
            sname = str(sop)
            if sname == "NEGATE":
                negate = True
            elif sname == "LITERAL":
                hit = hit or sav == ord(ch)
            elif sname == "RANGE":
                hit = hit or sav[0] <= ord(ch) <= sav[1]
            elif sname == "CATEGORY":
                pattern = _CATEGORY_RE.get(sav)
                hit = hit or bool(pattern and pattern.fullmatch(ch))
        return hit != negate
    return False


class _Checker:
    """Walks one parsed pattern; collects ``(shape, message)`` findings."""

    def __init__(self, dotall: bool) -> None:
        self.dotall = dotall
        self.found: list[tuple[str, str]] = []

    # -- facts about items ---------------------------------------------------------
    def chars(self, seq: Iterable[Item]) -> set[str]:
        """Whitespace characters some one-character item anywhere in ``seq`` matches."""
        out: set[str] = set()
        for op, av in seq:
            if op in _REPEATS or op in _ZERO_WIDTH or str(op) in ("SUBPATTERN", "ATOMIC_GROUP", "BRANCH"):
                for child in self.children(op, av):
                    out |= self.chars(child)
            else:
                out |= {ch for ch in _WS if _char_matches(op, av, ch, self.dotall)}
        return out

    def single_char(self, seq: Sequence[Item]) -> bool:
        r"""Whether ``seq`` always matches exactly one character (``\s``, ``[ \t]``, ``(?:a|\s)``)."""
        if len(seq) != 1:
            return False
        op, av = seq[0]
        if str(op) in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            return True
        if str(op) in ("SUBPATTERN", "ATOMIC_GROUP"):
            return self.single_char(self.children(op, av)[0])
        if str(op) == "BRANCH":
            return all(self.single_char(b) for b in av[1])
        return False

    def ws_repeat(self, item: Item) -> bool:
        r"""An unbounded quantifier over one character that can be whitespace (``\s*``, ``.+``).

        Compound bodies (``(\s*\w+)*``) are looked into by the callers instead.
        """
        op, av = item
        return op in _REPEATS and av[1] > UNBOUNDED and self.single_char(av[2]) and bool(self.chars(av[2]))

    def children(self, op: Any, av: Any) -> list[Sequence[Item]]:
        name = str(op)
        if op in _REPEATS:
            return [av[2]]
        if name == "SUBPATTERN":
            return [av[-1]]
        if name == "ATOMIC_GROUP":
            return [av]
        if name == "BRANCH":
            return list(av[1])
        if name in ("ASSERT", "ASSERT_NOT"):
            return [av[1]]
        if name == "GROUPREF_EXISTS":
            return [b for b in av[1:] if b is not None]
        return []

    def nullable(self, item: Item) -> bool:
        op, av = item
        name = str(op)
        if op in _REPEATS:
            return bool(av[0] == 0) or self.seq_nullable(av[2])
        if op in _ZERO_WIDTH:
            return True
        if name in ("SUBPATTERN", "ATOMIC_GROUP"):
            return self.seq_nullable(self.children(op, av)[0])
        if name == "BRANCH":
            return any(self.seq_nullable(b) for b in av[1])
        return False

    def seq_nullable(self, seq: Sequence[Item]) -> bool:
        return all(self.nullable(i) for i in seq)

    def firsts(self, seq: Sequence[Item]) -> list[Item]:
        """Unbounded whitespace quantifiers that may consume the first character of ``seq``."""
        out: list[Item] = []
        for item in seq:
            op, av = item
            if op in _ZERO_WIDTH:
                continue
            if self.ws_repeat(item):
                out.append(item)
            elif op in _REPEATS or str(op) in ("SUBPATTERN", "ATOMIC_GROUP", "BRANCH"):
                for child in self.children(op, av):
                    out += self.firsts(child)
            if not self.nullable(item):
                break
        return out

    def lasts(self, seq: Sequence[Item]) -> list[Item]:
        """Backtracking whitespace quantifiers that may consume the last character of ``seq``."""
        out: list[Item] = []
        for item in reversed(seq):
            op, av = item
            if op in _ZERO_WIDTH:
                continue
            if op in _POSSESSIVE or str(op) == "ATOMIC_GROUP":
                pass  # gives nothing back
            elif self.ws_repeat(item):
                out.append(item)
            elif op in _REPEATS or str(op) in ("SUBPATTERN", "BRANCH"):
                for child in self.children(op, av):
                    out += self.lasts(child)
            if not self.nullable(item):
                break
        return out

    # -- the three shapes ----------------------------------------------------------
    def leading(self, seq: Sequence[Item], anchor: Any = None) -> None:
        for item in seq:
            op, av = item
            if str(op) == "AT":
                anchor = av
                continue
            if op in _ZERO_WIDTH:
                continue
            if self.ws_repeat(item):
                pinned = anchor in _ALWAYS_PINS or (
                    anchor in _LINE_PINS and _NEWLINE not in self.chars(av[2])
                )
                if not pinned:
                    why = (
                        "after ^ it still crosses newlines" if anchor in _LINE_PINS else "nothing anchors it"
                    )
                    self.found.append(
                        (
                            "leading",
                            "starts with an unbounded quantifier over whitespace and "
                            f"{why}: the search retries it at every position of a blank run "
                            r"(quadratic); use [ \t]* after ^, or start with a literal",
                        )
                    )
            elif op in _REPEATS or str(op) in ("SUBPATTERN", "ATOMIC_GROUP", "BRANCH"):
                for child in self.children(op, av):
                    self.leading(child, anchor)
            if not self.nullable(item):
                return

    def walk(self, seq: Sequence[Item], inside_repeat: bool = False) -> None:
        """Adjacent and nested shapes, at every depth."""
        active: list[Item] = []
        for item in seq:
            op, av = item
            if op in _ZERO_WIDTH and str(op) not in ("ASSERT", "ASSERT_NOT", "GROUPREF_EXISTS"):
                continue
            if active and (self.firsts([item])):
                self.found.append(
                    (
                        "adjacent",
                        "two unbounded quantifiers that both match whitespace meet with only "
                        "optional items between them: a failed match tries every split of a "
                        r"blank run (quadratic); make the first possessive (\s*+) or say "
                        r"exactly what separates them (\s*+(?::\s*+)?)",
                    )
                )
                active = []
            if inside_repeat and self.ws_repeat(item):
                self.found.append(
                    (
                        "nested",
                        "an unbounded repeat contains an unbounded quantifier over whitespace, "
                        r"as in (\s+)* or (\s*\w+)*: exponential backtracking; repeat something "
                        "that cannot match the empty string or whitespace in two ways",
                    )
                )
                inside_repeat = False  # one finding per repeat is enough
            lasts = self.lasts([item])
            active = active + lasts if self.nullable(item) else lasts
            repeats_again = op in _REPEATS and op not in _POSSESSIVE and av[1] > 1
            for child in self.children(op, av):
                self.walk(child, inside_repeat or repeats_again)


def backtracking_warnings(pattern: str) -> list[str]:
    """Human-readable warnings for the shapes above (empty when none, or if unsure).

    Parsing uses the flags templates are matched with (MULTILINE, IGNORECASE). Any
    failure inside the check — an invalid pattern (reported elsewhere) or a parser
    whose internals moved — yields no warning rather than an exception.
    """
    if _p is None:  # pragma: no cover - a Python without the parser module
        return []
    try:
        parsed = _p.parse(pattern, re.MULTILINE | re.IGNORECASE)
        checker = _Checker(dotall=bool(parsed.state.flags & re.DOTALL))
        items = list(parsed)
        checker.leading(items)
        checker.walk(items)
    except Exception:  # noqa: BLE001 - advisory only; never break validation
        return []
    seen: set[str] = set()
    out: list[str] = []
    for shape, message in checker.found:
        if shape not in seen:
            seen.add(shape)
            out.append(f"{shape}: {message}")
    return out
