"""Facts of a branch from its messages' text, with no LLM.

:func:`extract_facts` finds key/value facts with regular expressions (values
people state: "my name is Ana", "2 tickets", "March 4th", "7:15 pm", "$50",
"from Phoenix to San Francisco", e-mail addresses, phone numbers) plus proper
nouns ("entity") and the branch's key words ("phrase"). Deterministic: ties
break by first mention.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from driftd.routing.text import TopicCounter, content_words
from driftd.routing.types import Fact

_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
_WEEKDAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
_NUMBER_WORDS = {
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_COUNT = r"(\d+|" + "|".join(_NUMBER_WORDS) + r")"
# A run of capitalised words, possibly joined by "of", "de", "&" ... ("Bank of America").
_NAME = r"([A-Z][\w'&\-]*(?:\s+(?:(?:de|la|del|of|the|and|&)\s+)?[A-Z][\w'&\-]*)*)"

#: (key, compiled pattern, group holding the value, base confidence). Keys in
#: ``{}`` take the text of group 1 as the key and group 2 as the value.
_PATTERNS: tuple[tuple[str, re.Pattern[str], int, float], ...] = (
    ("name", re.compile(r"\bmy name is " + _NAME), 1, 0.9),
    (
        "{}",
        re.compile(
            r"\bmy ((?:[a-z]+ )?(?:address|budget|email|phone|number|birthday|city|"
            # The value ends at punctuation; a "." only when a space or the end follows.
            r"account|order|reservation|username|name)) is "
            r"([^,;!?\n]{1,60}?)(?=[,;!?\n]|\.(?:\s|$)|$)",
            re.I,
        ),
        2,
        0.9,
    ),
    ("location", re.compile(r"\bI (?:live|am based|'m based) in " + _NAME), 1, 0.85),
    ("email", re.compile(r"\b[\w.+\-]+@[\w\-]+\.[\w.\-]+\b"), 0, 0.9),
    ("phone", re.compile(r"(?<!\w)\+?\d[\d\s\-()]{7,}\d\b"), 0, 0.8),
    ("amount", re.compile(r"[$€£]\s?\d[\d,]*(?:\.\d+)?"), 0, 0.8),
    (
        "time",
        re.compile(r"\b\d{1,2}(?::\d{2})?\s?(?:am|pm|a\.m\.|p\.m\.)|\b\d{1,2}:\d{2}\b", re.I),
        0,
        0.8,
    ),
    (
        "date",
        re.compile(
            r"\b(?:(?:" + _MONTHS + r")\s+\d{1,2}(?:st|nd|rd|th)?|\d{1,2}(?:st|nd|rd|th)?\s+of\s+"
            r"(?:" + _MONTHS + r"|this month|next month)|(?:next\s+)?(?:" + _WEEKDAYS + r")|"
            r"today|tomorrow|tonight|day after tomorrow)\b",
            re.I,
        ),
        0,
        0.75,
    ),
    ("origin", re.compile(r"\bfrom " + _NAME), 1, 0.7),
    ("destination", re.compile(r"\b(?:to|towards|for) " + _NAME), 1, 0.6),
    ("location", re.compile(r"\b(?:in|at|near) " + _NAME), 1, 0.6),
)
_COUNTED = re.compile(
    r"(?<![$€£\d.,])\b"
    + _COUNT
    + r"\s+(?:\w+\s+)?(tickets?|people|persons?|passengers?|adults?|children|"
    r"kids|rooms?|seats?|nights?|days?|tables?|guests?|bags?|stops?)\b",
    re.I,
)
_ENTITY = re.compile(_NAME)
_SENTENCE_END = (".", "!", "?", ":")
#: Keys with one true value at a time: a later value supersedes an earlier one.
SINGLE_VALUED = frozenset(
    {"name", "email", "phone", "date", "time", "origin", "destination", "amount"}
)
_SUPERSEDED = 0.5  # confidence factor of a single-valued key's earlier values
_NOT_NAMES = frozenset("I I'm I'd I'll I've Is The This That It Yes No Ok You Your We My".split())


@dataclass(frozen=True)
class SourceMessage:
    """What the extractors read of a message."""

    id: str
    role: str  # "user" | "assistant"
    content: str


def _clean(value: str) -> str:
    return " ".join(value.strip(" \t\n'\".,;:!?").split())


def _candidates(text: str) -> Iterable[tuple[str, str, float]]:
    """(key, value, base confidence) of every fact pattern matching ``text``."""
    taken: list[tuple[int, int]] = []  # spans already explained by a typed pattern
    for key, pattern, group, base in _PATTERNS:
        for m in pattern.finditer(text):
            span = m.span(group)
            if any(lo <= span[0] < hi for lo, hi in taken):
                continue
            value = _clean(m.group(group))
            if not value or value in _NOT_NAMES:
                continue
            name = _clean(m.group(1)).lower() if key == "{}" else key
            taken.append(span)
            yield name, value, base
    for m in _COUNTED.finditer(text):
        noun = m.group(2).lower()
        noun = noun if noun.endswith(("s", "people", "children")) else noun + "s"
        yield noun, _NUMBER_WORDS.get(m.group(1).lower(), m.group(1)), 0.8
    # Proper nouns: capitalised runs, except a single word opening a sentence.
    for m in _ENTITY.finditer(text):
        if any(lo <= m.start(1) < hi for lo, hi in taken):
            continue
        words = m.group(1).split()
        while words and words[-1] in _NOT_NAMES:  # "Indeed I" -> "Indeed"
            words.pop()
        value = _clean(" ".join(words))
        before = text[: m.start(1)].rstrip()
        if " " not in value and (not before or before.endswith(_SENTENCE_END)):
            continue
        if value and value not in _NOT_NAMES:
            yield "entity", value, 0.5


def extract_facts(
    messages: Iterable[SourceMessage], *, max_phrases: int = 5, max_facts: int = 50
) -> list[Fact]:
    """The facts of a branch, most confident first (ties by first mention).

    Every mention of the same (key, value) raises its confidence by noisy-or
    (1 - Π(1 - base)); for single-valued keys (:data:`SINGLE_VALUED`), values
    mentioned before the latest one are scaled by 0.5. The branch's
    ``max_phrases`` most frequent key words (mentioned at least twice) are added
    as ``phrase`` facts with confidence count / (count + 2).
    """
    miss: dict[tuple[str, str], float] = {}  # (key, value lower) -> Π(1 - base)
    shown: dict[tuple[str, str], str] = {}
    order: dict[tuple[str, str], int] = {}
    last: dict[tuple[str, str], tuple[int, str]] = {}  # -> (mention number, message id)
    topic = TopicCounter()
    word_source: dict[str, str] = {}
    mention = 0
    for msg in messages:
        found = content_words(msg.content)
        topic.add(found)
        word_source.update(dict.fromkeys(found, msg.id))
        for key, value, base in _candidates(msg.content):
            k = (key, value.lower())
            miss[k] = miss.get(k, 1.0) * (1.0 - base)
            shown.setdefault(k, value)
            order.setdefault(k, len(order))
            last[k] = (mention, msg.id)
            mention += 1
    latest_of_key: dict[str, int] = {}
    for (key, _), (n, _) in last.items():
        latest_of_key[key] = max(latest_of_key.get(key, -1), n)
    facts: list[tuple[float, int, Fact]] = []
    for k, m in miss.items():
        conf = 1.0 - m
        if k[0] in SINGLE_VALUED and last[k][0] < latest_of_key[k[0]]:
            conf *= _SUPERSEDED
        conf = round(min(conf, 0.99), 4)
        facts.append((conf, order[k], Fact(k[0], shown[k], conf, last[k][1])))
    for i, w in enumerate(topic.ranked()):
        if i >= max_phrases or topic.counts[w] < 2:
            break
        c = topic.counts[w]
        conf = round(c / (c + 2.0), 4)
        facts.append((conf, len(order) + i, Fact("phrase", w, conf, word_source[w])))
    facts.sort(key=lambda f: (-f[0], f[1]))
    return [f for _, _, f in facts[:max_facts]]
