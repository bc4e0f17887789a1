"""Document templates: rules that recognise a kind of document and regexes that read its fields.

A template (``workflow_defs/templates/<name>.yaml``) scores a text by its rules —
``literal`` (case-insensitive substring), ``any`` / ``all`` of several literals,
``regex``, ``fuzzy`` (a phrase matched with difflib, tolerant of OCR-style
typos) — each with a weight (negative weights count against). The score is the
matched weight over the total positive weight; the best template at or above its
``threshold`` wins. Fields are read with named-group regexes and typed:
``date`` → ISO 8601, ``amount`` → decimal string plus a ``currency`` field,
``id`` / ``text`` → strings.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import DefinitionError
from .regexcheck import backtracking_warnings

MAX_TEXT = 200_000
CURRENCY_SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}
DATE_FORMATS = [
    "%Y-%m-%d",
    "%d/%m/%Y",
    "%d.%m.%Y",
    "%d %B %Y",
    "%d %b %Y",
    "%B %d, %Y",
    "%b %d, %Y",
    "%B %d %Y",
    "%d-%m-%Y",
    "%Y/%m/%d",
]


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    literal: str | None = None
    any: list[str] | None = None
    all: list[str] | None = None
    regex: str | None = None
    fuzzy: str | None = None
    cutoff: float = Field(0.85, gt=0, le=1)
    weight: float = 1.0

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        kinds = [k for k in ("literal", "any", "all", "regex", "fuzzy") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("a rule has exactly one of literal, any, all, regex, fuzzy")
        if self.regex:
            re.compile(self.regex)
        return self


class FieldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    regex: str
    type: Literal["date", "amount", "id", "text"] = "text"

    @model_validator(mode="after")
    def _has_value_group(self) -> FieldSpec:
        if "value" not in re.compile(self.regex).groupindex:
            raise ValueError("a field regex needs a named group (?P<value>…)")
        return self


class Template(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    threshold: float = Field(0.6, gt=0, le=1)
    rules: list[Rule] = Field(min_length=1)
    fields: dict[str, FieldSpec] = Field(default_factory=dict)


@dataclass(frozen=True)
class Match:
    template: str | None
    confidence: float
    fields: dict[str, Any]
    #: Fields the template declares that the text did not give.
    missing: tuple[str, ...] = ()


def load_templates(folder: Path) -> list[Template]:
    templates: list[Template] = []
    problems: list[str] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            templates.append(Template.model_validate(yaml.safe_load(path.read_text())))
        except (ValidationError, yaml.YAMLError, re.error) as exc:
            problems.append(f"{path}: {exc}")
    if problems:
        raise DefinitionError(problems)
    return templates


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _fuzzy(phrase: str, words: list[str], cutoff: float) -> bool:
    """Whether some window of ``len(phrase)`` words is at least ``cutoff`` similar to it.

    One window per word of untrusted text (100,000 at the cap): the two cheap upper
    bounds difflib offers are checked first, as ``difflib.get_close_matches`` does, so
    the full ratio runs only on windows that could reach the cutoff.
    """
    n = max(1, len(phrase.split()))
    matcher = difflib.SequenceMatcher(None, phrase.lower())
    for i in range(0, max(1, len(words) - n + 1)):
        matcher.set_seq2(" ".join(words[i : i + n]))
        if (
            matcher.real_quick_ratio() >= cutoff
            and matcher.quick_ratio() >= cutoff
            and matcher.ratio() >= cutoff
        ):
            return True
    return False


def _rule_matches(rule: Rule, text: str, words: list[str], raw: str) -> bool:
    if rule.literal:
        return rule.literal.lower() in text
    if rule.any:
        return any(s.lower() in text for s in rule.any)
    if rule.all:
        return all(s.lower() in text for s in rule.all)
    if rule.regex:
        return re.search(rule.regex, raw, re.IGNORECASE | re.MULTILINE) is not None
    assert rule.fuzzy is not None
    return _fuzzy(rule.fuzzy, words, rule.cutoff)


def score(template: Template, raw: str) -> float:
    text = _norm(raw)
    words = text.split(" ")
    total = sum(r.weight for r in template.rules if r.weight > 0)
    got = sum(r.weight for r in template.rules if _rule_matches(r, text, words, raw))
    return round(max(0.0, got) / total, 3) if total else 0.0


def parse_date(value: str) -> str | None:
    cleaned = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", value.strip().rstrip(".,"))
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(cleaned, fmt).date().isoformat()
        except ValueError:
            continue
    return None


def parse_amount(value: str) -> str | None:
    """'1,240.50' / '1.240,50' / '300' → a plain decimal string."""
    v = value.strip().replace(" ", "").replace("'", "")
    if "," in v and "." in v:
        decimal_sep = "," if v.rfind(",") > v.rfind(".") else "."
    elif "," in v:
        decimal_sep = "," if len(v) - v.rfind(",") == 3 else ""
    else:
        decimal_sep = "."
    thousands = {",", "."} - {decimal_sep}
    for t in thousands:
        v = v.replace(t, "")
    if decimal_sep == ",":
        v = v.replace(",", ".")
    try:
        return str(Decimal(v).quantize(Decimal("0.01")))
    except InvalidOperation:
        return None


def extract_fields(template: Template, raw: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, spec in template.fields.items():
        m = re.search(spec.regex, raw, re.IGNORECASE | re.MULTILINE)
        if not m:
            continue
        value = m.group("value").strip()
        if spec.type == "date":
            parsed = parse_date(value)
            if parsed:
                fields[name] = parsed
        elif spec.type == "amount":
            amount = parse_amount(value)
            if amount is not None:
                fields[name] = amount
                cur = (m.groupdict().get("currency") or "").strip()
                if cur:
                    fields.setdefault("currency", CURRENCY_SYMBOLS.get(cur, cur.upper()))
        else:
            fields[name] = value
    return fields


def recognize_text(templates: list[Template], raw: str) -> Match:
    """Best template at or above its threshold, with its fields; else the top score alone.

    Each template is scored once (the text is untrusted and may be at the cap, so no
    second pass). Callers run this inside the sandbox child (see ``steps/recognize.py``).
    """
    raw = raw[:MAX_TEXT]
    scores = [(score(t, raw), t) for t in templates]
    best: tuple[float, Template | None] = (0.0, None)
    for s, t in scores:
        if s >= t.threshold and s > best[0]:
            best = (s, t)
    if best[1] is None:
        return Match(None, max((s for s, _ in scores), default=0.0), {})
    fields = extract_fields(best[1], raw)
    missing = tuple(name for name in best[1].fields if name not in fields)
    return Match(best[1].name, best[0], fields, missing)


def _regex_lines(text: str) -> list[tuple[str, str, int]]:
    """``(where, pattern, line)`` for each rule and field regex of one template file."""
    root = yaml.compose(text)
    found: list[tuple[str, str, int]] = []
    if not isinstance(root, yaml.MappingNode):
        return found
    for key, value in root.value:
        if key.value == "rules" and isinstance(value, yaml.SequenceNode):
            for i, rule in enumerate(value.value):
                for k, v in rule.value if isinstance(rule, yaml.MappingNode) else []:
                    if k.value == "regex" and isinstance(v, yaml.ScalarNode):
                        found.append((f"rules[{i}]", str(v.value), v.start_mark.line + 1))
        elif key.value == "fields" and isinstance(value, yaml.MappingNode):
            for name, spec in value.value:
                for k, v in spec.value if isinstance(spec, yaml.MappingNode) else []:
                    if k.value == "regex" and isinstance(v, yaml.ScalarNode):
                        found.append((f"fields.{name.value}", str(v.value), v.start_mark.line + 1))
    return found


def template_warnings(folder: Path) -> list[str]:
    """``file:line: warning: …`` for template regexes that may backtrack catastrophically.

    Advisory (``dox defs validate`` prints them and still exits 0): the sandbox's CPU
    limit is what bounds matching; this tells the author before a document does.
    Files that do not parse are skipped here — :func:`load_templates` reports them.
    """
    warnings: list[str] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            located = _regex_lines(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        for where, pattern, line in located:
            for message in backtracking_warnings(pattern):
                warnings.append(f"{path}:{line}: warning: {where} regex '{pattern}': {message}")
    return warnings
