"""Text features of messages: content words, discourse cues, branch topics.

Content words are the lower-case words of three or more letters that are not
function words or conversational filler (:data:`STOPWORDS`). The cues are
English discourse markers (Grosz & Sidner 1986; Passonneau & Litman 1997):
*shift* markers introduce a new topic ("also", "another", "instead"),
*return* markers come back to an earlier one ("back to", "again", "the one you
found"), and *open* questions invite a new topic ("anything else?").
"""

from __future__ import annotations

import re
from collections import Counter

# Conversational filler and function words: never topic words.
STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any anything are aren't around as
    at be because been before being below between both but by can can't cannot could
    couldn't did didn't do does doesn't doing don't down during each else even ever every
    few for from further get gets getting give go going good got great had hadn't has hasn't
    have haven't having he he'd he'll he's help her here here's hers herself him himself his
    how how's i i'd i'll i'm i've if in into is isn't it it's its itself just know let let's
    like look looking lot make me might more most much must mustn't my myself need needs no
    nor not nothing now of off ok okay on once one only or other ought our ours ourselves out
    over own please perfect really right same say see shall shan't she she'd she'll she's
    should shouldn't so some something sorry sound sounds still such sure tell thank thanks
    than that that's the their theirs them themselves then there there's these they they'd
    they'll they're they've thing things think this those through to too try under until up
    us very want wanted wants was wasn't way we we'd we'll we're we've well were weren't what
    what's when when's where where's which while who who's whom why why's will with won't
    would wouldn't yeah yes yet you you'd you'll you're you've your yours yourself
    yourselves fine alright cool awesome wonderful nice find found day today great
    two three four five six seven eight nine ten back hey hello bye goodbye oh yep nope
    """.split()
)

_WORD = re.compile(r"[a-z][a-z'\-]+")
_SHIFT = re.compile(
    r"\b(also|another|instead|as well|in addition|additionally|besides|by the way|"
    r"one more thing|something else|next)\b",
    re.I,
)
_RETURN = re.compile(
    r"\b(back to|go back|return to|again|earlier|before|previous|previously|"
    r"we discussed|we talked|you found|you mentioned|you suggested|the one|that one)\b",
    re.I,
)
_OPEN = re.compile(r"\b(anything else|something else|any other|else i can|help you with)\b", re.I)


def content_words(text: str) -> list[str]:
    """The content words of ``text``, in order, with repeats."""
    found = (w.strip("'-") for w in _WORD.findall(text.lower()))
    return [w for w in found if len(w) > 2 and w not in STOPWORDS]


def is_question(text: str) -> bool:
    """True when the text asks something (contains a question mark)."""
    return "?" in text


def shift_cue(text: str) -> bool:
    """True when the text has a topic-shift marker ("also", "another", ...)."""
    return _SHIFT.search(text) is not None


def return_cue(text: str) -> bool:
    """True when the text has a marker of returning to an earlier topic."""
    return _RETURN.search(text) is not None


def open_question(text: str) -> bool:
    """True when the text invites a new topic ("Anything else I can help with?")."""
    return _OPEN.search(text) is not None


class TopicCounter:
    """Content-word counts of one branch; its topic is the top words.

    ``add`` costs O(words of the message); ``topic`` O(distinct words).
    """

    __slots__ = ("counts", "first_seen")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first_seen: dict[str, int] = {}

    def add(self, words: list[str]) -> None:
        for w in words:
            self.first_seen.setdefault(w, len(self.first_seen))
            self.counts[w] += 1

    def ranked(self) -> list[str]:
        """Distinct words, most frequent first, ties by first mention."""
        return sorted(self.counts, key=lambda w: (-self.counts[w], self.first_seen[w]))

    def topic(self, n: int = 3) -> str:
        """The ``n`` most frequent words, comma-separated."""
        return ", ".join(self.ranked()[:n])
