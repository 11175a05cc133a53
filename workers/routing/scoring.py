"""A query's complexity, by the seed's rules: points for its length in words, for medical and
legal terms and for "complex" keywords; the total sets simple / medium / complex.

Matching is Unicode-aware and Turkish-safe: text and terms are folded alike (case, and dotted
and dotless i as one letter, so "İ", "I", "ı" and "i" all match each other whichever language's
capitalisation was used), and a term matches a word that begins with it, so one stem covers
inflected forms ("röntgen" matches "röntgeninde"). Words are runs of letters and digits, joined
by inner hyphens or apostrophes (or a decimal point): "COVID-19", "Ankara'da" and "3.5" are one
word each.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from workers.routing.config import Scoring

# Letters and digits, joined by inner hyphens or apostrophes, or by a point or comma between
# digits ("3.5"): punctuation elsewhere separates words.
WORD = re.compile(r"[^\W_]+(?:(?:['’\-]|(?<=\d)[.,](?=\d))[^\W_]+)*")
# Dotted capital I, dotless i and plain capital I all become "i" (so no combining dot is left
# after "İ"); NFKC first folds compatibility forms such as fullwidth letters.
I_VARIANTS = str.maketrans({"İ": "i", "I": "i", "ı": "i"})


class Complexity(StrEnum):
    SIMPLE = "simple"
    MEDIUM = "medium"
    COMPLEX = "complex"


def fold(text: str) -> str:
    """Text as it is compared: NFKC, i-variants unified, case-folded, combining dots dropped."""
    text = unicodedata.normalize("NFKC", text).translate(I_VARIANTS).casefold()
    return text.replace("\u0307", "")


def words(text: str) -> list[str]:
    """The folded words of `text` (see the module docstring for what a word is)."""
    return WORD.findall(fold(text))


@dataclass(frozen=True)
class RuleHit:
    """One rule that added points: which, how many, and every term of it that matched (points
    count at most the rule's `max_hits` of them)."""

    rule: str
    points: int
    matched: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "points": self.points, "matched": list(self.matched)}


@dataclass(frozen=True)
class Classification:
    score: int
    complexity: Complexity
    word_count: int
    rules: tuple[RuleHit, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "complexity": self.complexity.value,
            "word_count": self.word_count,
            "rules": [hit.as_dict() for hit in self.rules],
        }


def matches(term: str, tokens: list[str]) -> bool:
    """True if the (possibly multi-word) `term` occurs in `tokens`, each term word beginning a
    query word, in order and adjacent. A term ending in `$` must match its last word whole
    ("court$" matches "court", not "courtesy")."""
    exact = term.rstrip().endswith("$")
    parts = words(term.rstrip().rstrip("$"))
    if not parts:
        return False

    def fits(token: str, i: int) -> bool:
        return token == parts[i] if exact and i == len(parts) - 1 else token.startswith(parts[i])

    last = len(tokens) - len(parts)
    return any(all(fits(tokens[start + i], i) for i in range(len(parts))) for start in range(last + 1))


def classify(query: str, scoring: Scoring) -> Classification:
    """Score `query` by `scoring`'s rules."""
    tokens = words(query)
    count = len(tokens)
    bucket = next((b for b in scoring.word_buckets if count < b.below), None)
    length_points = bucket.points if bucket is not None else scoring.long_points
    hits = [RuleHit("length", length_points, (f"{count} word{'' if count == 1 else 's'}",))]
    for name, rule in scoring.rules.items():
        matched = tuple(term.rstrip().rstrip("$") for term in rule.terms if matches(term, tokens))
        if matched:
            hits.append(RuleHit(name, rule.points * min(len(matched), rule.max_hits), matched))
    score = sum(hit.points for hit in hits)
    if score >= scoring.complex_at:
        complexity = Complexity.COMPLEX
    elif score >= scoring.medium_at:
        complexity = Complexity.MEDIUM
    else:
        complexity = Complexity.SIMPLE
    return Classification(score, complexity, count, tuple(hits))
