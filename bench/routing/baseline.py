"""driftos-embed's routing rule, reimplemented from its public description for
comparison (nothing of its code is used).

Per branch a centroid kept as a running average of the raw embeddings, never
renormalised. For each message:

1. no branch yet: BRANCH (new cluster);
2. s = cosine to the current branch's centroid, times 1.3 (at most 1) when the
   previous message contains "?" and this one does not;
3. s > stay: STAY;
4. else the most similar of the 10 most recently updated other branches, by
   raw cosine, > route: ROUTE;
5. else BRANCH: "same cluster" if s > new_cluster, "new cluster" otherwise.

A new branch's centroid is its first message's embedding; STAY and ROUTE update
the target branch's centroid and make it the most recently updated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class BaselineConfig:
    """driftos-embed's published thresholds and boost."""

    stay: float = 0.38
    route: float = 0.42
    new_cluster: float = 0.15
    qa_boost: float = 1.3
    max_other_branches: int = 10


@dataclass
class _Branch:
    centroid: np.ndarray
    count: int = 1


@dataclass
class BaselineConversation:
    """One conversation's state under the baseline rule."""

    config: BaselineConfig = field(default_factory=BaselineConfig)
    branches: list[_Branch] = field(default_factory=list)
    recency: list[int] = field(default_factory=list)  # branch indices, most recent last
    current: int = -1
    last_text: str = ""

    def route(self, x: np.ndarray, text: str) -> str:
        """Routes one message (embedding ``x`` (d,), text ``text``); returns
        "STAY", "BRANCH" or "ROUTE" and updates the state."""
        cfg = self.config
        x = np.asarray(x, dtype=np.float64)
        if self.current < 0:
            return self._branch(x, text)
        s = _cos(x, self.branches[self.current].centroid)
        if "?" in self.last_text and "?" not in text:
            s = min(s * cfg.qa_boost, 1.0)
        if s > cfg.stay:
            return self._add(self.current, x, text, "STAY")
        others = [b for b in reversed(self.recency) if b != self.current]
        others = others[: cfg.max_other_branches]
        if others:
            sims = [_cos(x, self.branches[b].centroid) for b in others]
            best = int(np.argmax(sims))
            if sims[best] > cfg.route:
                return self._add(others[best], x, text, "ROUTE")
        return self._branch(x, text)

    def _branch(self, x: np.ndarray, text: str) -> str:
        self.branches.append(_Branch(x.copy()))
        self._touch(len(self.branches) - 1, text)
        return "BRANCH"

    def _add(self, b: int, x: np.ndarray, text: str, action: str) -> str:
        branch = self.branches[b]
        branch.count += 1
        branch.centroid += (x - branch.centroid) / branch.count
        self._touch(b, text)
        return action

    def _touch(self, b: int, text: str) -> None:
        if b in self.recency:
            self.recency.remove(b)
        self.recency.append(b)
        self.current = b
        self.last_text = text


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / denom if denom > 0 else 0.0
