"""The routing decision: STAY in the current branch, open a BRANCH, or ROUTE
back to an earlier one. Pure numpy, no I/O: the engine feeds it unit embeddings
and stores what it decides; the benchmark (``bench/routing``) calibrates it.

The anchor is driftos-embed: a running-average centroid per branch; cosine to the
current branch's centroid > 0.38 stays, else the best of the 10 most recently
updated other branches > 0.42 routes, else a new branch; similarity × 1.3 for an
answer after a question. On real dialogues (Schema-Guided Dialogue) that rule
branches on every short reply ("Yes, that works."), so its branches drift from
the topics and its routes mostly return from branches that should not exist.
The rule here compares in the *topic space* (see
:mod:`~driftd.routing.projection`): cos(x, c) below is the cosine of the
projected message with the projected centroid (or the plain embedding cosine
when ``topic_projection`` is off or the embed model has no projection). It
scores a user message against the current branch with

    stay = max(cos(x, centroid), max cos(x, last k messages))
           + answer_boost        if it answers a question (not an open one)
           + short_message_boost * max(0, 1 - content words / 4)
           - new_word_penalty    * min(3, content words new to the conversation)
           - cue_weight          if it has a shift marker or follows an open question

and an earlier branch b with

    route(b) = cos(x, centroid_b)
               + cue_weight      if it has a return marker ("back to", "the one you found")
               + anchor_weight   if it shares a content word with b that the
                                 current branch never used (a lexical anchor:
                                 back-references name what they return to)

Then, in order:

1. an assistant message stays (it answers the user message just routed);
2. ROUTE to the best of the ``route_candidates`` most recently active other
   branches when route(b) >= route_threshold and route(b) >= stay + route_margin;
3. STAY when stay >= stay_threshold, or when the message has no content words
   at all (backchannels carry no topic);
4. BRANCH otherwise, in the current branch's cluster when cos(x, current) >=
   new_cluster_threshold.

Centroids are sums of unit embeddings (exact, order-independent updates; the
cosine does not depend on their length, so keeping them unnormalised changes
nothing else); the projection is linear, so a projected centroid is the
projection of the sum. All arithmetic is float64 in a fixed order: the same
messages with the same config give the same decisions.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from driftd.routing.projection import TopicProjection
from driftd.routing.text import (
    TopicCounter,
    content_words,
    is_question,
    open_question,
    return_cue,
    shift_cue,
)
from driftd.routing.types import Action, DriftAction, Role

# Content words at which a message counts as fully informative for the
# short-message boost.
_INFORMATIVE_WORDS = 4
# New words counted by the new-word penalty.
_MAX_NEW_WORDS = 3
# Cosine distance from a threshold at which a decision counts as sure.
_SURE = 0.2


@dataclass(frozen=True)
class RoutingConfig:
    """How a conversation is routed; similarities are cosines in [-1, 1].

    The defaults are calibrated for all-MiniLM-L6-v2 and its topic projection on
    the calibration split of the Schema-Guided Dialogue training dialogues by
    ``make bench-routing`` (coordinate ascent on macro-F1 over STAY/BRANCH/ROUTE
    among configs with ROUTE recall >= 0.6 at precision >= 0.5), which prints
    the values it finds next to these. See the module docstring for the rule.
    """

    stay_threshold: float = 0.15
    route_threshold: float = 0.575
    route_margin: float = 0.7
    new_cluster_threshold: float = 0.15
    answer_boost: float = 0.15
    short_message_boost: float = 0.1
    new_word_penalty: float = 0.07
    cue_weight: float = 0.125
    anchor_weight: float = 0.35
    recent_messages: int = 0
    route_candidates: int = 10
    assistant_follows_user: bool = True
    topic_projection: bool = True

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RoutingConfig:
        """Ignores unknown keys, so configs stored by older versions still load."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class Decision:
    """What to do with one message.

    ``branch`` is the index of the branch the message goes to (for BRANCH, the
    index the new branch gets); ``similarity`` the message's cosine to that
    branch (for BRANCH: to the branch it leaves; 0 for the first message).
    """

    action: Action
    drift_action: DriftAction
    branch: int
    similarity: float
    confidence: float
    reason: str
    is_new_branch: bool
    previous_branch: int  # -1 for the first message
    cluster: int


@dataclass
class BranchState:
    """What the router keeps of a branch: the sum of its unit vectors (d,)
    float64, its latest unit vectors (float32, to halve their memory), counts,
    times and content-word counts."""

    index: int
    parent: int
    cluster: int
    create_time: float
    total: np.ndarray
    count: int = 0
    recent: deque = field(default_factory=deque)
    update_seq: int = -1
    update_time: float = 0.0
    words: TopicCounter = field(default_factory=TopicCounter)

    def centroid_similarity(self, q: np.ndarray, projection: TopicProjection | None) -> float:
        """cos(q, centroid) for a unit ``q`` in the space ``projection`` maps
        embeddings to (the embedding space itself when None)."""
        total = self.total if projection is None else projection.transform(self.total)
        norm = float(np.linalg.norm(total))
        return float(total @ q) / norm if norm > 0 else 0.0

    def similarity(self, q: np.ndarray, recent: int, projection: TopicProjection | None) -> float:
        """max(cos(q, centroid), cos(q, each of the latest ``recent`` messages)),
        in the space of :meth:`centroid_similarity`."""
        best = self.centroid_similarity(q, projection)
        if recent and self.recent:
            latest = np.stack(list(self.recent)[-recent:]).astype(np.float64)
            if projection is not None:
                latest = projection.transform(latest)
            norms = np.linalg.norm(latest, axis=1)
            best = max(best, float(np.max(latest @ q / np.where(norms > 0, norms, 1.0))))
        return best


@dataclass
class ConversationState:
    """A conversation as the router sees it."""

    config: RoutingConfig = field(default_factory=RoutingConfig)
    branches: list[BranchState] = field(default_factory=list)
    current: int = -1
    message_count: int = 0
    seen_words: set[str] = field(default_factory=set)
    last_was_question: bool = False
    last_was_open: bool = False
    #: Branch number in stored decisions -> index in ``branches`` (see :func:`branch_of`).
    labels: dict[int, int] = field(default_factory=dict)


def branch_of(labels: dict[int, int], count: int, current: int, label: int, new: bool) -> int:
    """The index, among ``count`` branches so far, of the branch a stored decision
    names by ``label``; records a new branch (``new``) in ``labels``.

    One decider numbers branches 0, 1, ... and this is the identity. Should two
    replicas briefly both decide for one conversation, both may create "branch
    k": replayed in storage order, every new-branch decision gets the next index
    and later references to ``k`` mean the latest branch created as ``k``; a
    reference to a branch never created (or out of range) means the current one.
    Deterministic, so every replica rebuilds the same branches.
    """
    if new:
        labels[label] = count
        return count
    index = labels.get(label, label)
    return index if 0 <= index < count else max(current, 0)


def unit(vector) -> np.ndarray:
    """``vector`` as a float64 unit vector (a zero vector stays zero)."""
    x = np.asarray(vector, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(x))
    return x / norm if norm > 0 else x


def _confidence(margin: float) -> float:
    """|margin| from a threshold mapped to 0-1 (``_SURE`` of cosine counts as sure)."""
    return float(min(1.0, abs(margin) / _SURE))


class Router:
    """Decides and applies routing decisions on :class:`ConversationState`\\ s.

    ``decide`` has no side effects, so the caller can store the decision first
    and ``apply`` it once it is durable. ``projection`` is the topic projection
    of the embed model the messages come from (see
    :mod:`~driftd.routing.projection`); similarities are taken in its space for
    conversations whose config has ``topic_projection`` on, in the embedding
    space otherwise or when it is None. Branch state is kept in the embedding
    space either way, so the setting can change at any message.
    """

    def __init__(self, projection: TopicProjection | None = None) -> None:
        self.projection = projection

    def _space(self, cfg: RoutingConfig, x: np.ndarray):
        """(the query vector, the projection or None) for unit x under cfg."""
        if cfg.topic_projection and self.projection is not None:
            return unit(self.projection.transform(x)), self.projection
        return x, None

    def decide(
        self, state: ConversationState, cfg: RoutingConfig, role: Role, x: np.ndarray, text: str
    ) -> Decision:
        """The decision under ``cfg`` for a message (unit vector ``x`` (d,), ``text``)."""
        if state.current < 0:
            return Decision(
                action="BRANCH",
                drift_action="BRANCH_NEW_CLUSTER",
                branch=0,
                similarity=0.0,
                confidence=1.0,
                reason="first message of the conversation",
                is_new_branch=True,
                previous_branch=-1,
                cluster=0,
            )
        current = state.branches[state.current]
        q, projection = self._space(cfg, x)
        s_cur = current.similarity(q, cfg.recent_messages, projection)
        if role == "assistant" and cfg.assistant_follows_user:
            return self._stay(
                current, s_cur, 1.0, "an assistant message answers the user message before it"
            )

        words = content_words(text)
        stay, notes = s_cur, [f"similarity {s_cur:.3f}"]
        if state.last_was_question and not state.last_was_open and not is_question(text):
            stay += cfg.answer_boost
            notes.append(f"+{cfg.answer_boost:g} answer")
        short = cfg.short_message_boost * max(0.0, 1.0 - len(words) / _INFORMATIVE_WORDS)
        if short:
            stay += short
            notes.append(f"+{short:.3g} short message")
        new = min(_MAX_NEW_WORDS, len({w for w in words if w not in state.seen_words}))
        if new:
            stay -= cfg.new_word_penalty * new
            notes.append(f"-{cfg.new_word_penalty * new:.3g} for {new} new word(s)")
        if shift_cue(text) or state.last_was_open:
            stay -= cfg.cue_weight
            notes.append(f"-{cfg.cue_weight:g} shift cue")
        stay_note = f"stay score {stay:.3f} ({', '.join(notes)})"

        target, route, anchor = self._route_target(state, cfg, current, q, projection, words, text)
        if target is not None and route >= cfg.route_threshold and route - stay >= cfg.route_margin:
            return Decision(
                action="ROUTE",
                drift_action="ROUTE",
                branch=target.index,
                similarity=target.centroid_similarity(q, projection),
                confidence=_confidence(
                    min(route - cfg.route_threshold, route - stay - cfg.route_margin)
                ),
                reason=f"returns to b{target.index}"
                + (f" (shares {anchor!r})" if anchor else "")
                + f": route score "
                f"{route:.3f} >= {cfg.route_threshold:g} and >= {stay_note} + "
                f"{cfg.route_margin:g}",
                is_new_branch=False,
                previous_branch=current.index,
                cluster=target.cluster,
            )
        if not words:
            return self._stay(current, s_cur, 1.0, "no content words: a reply carries no new topic")
        if stay >= cfg.stay_threshold:
            return self._stay(
                current,
                s_cur,
                _confidence(stay - cfg.stay_threshold),
                f"{stay_note} >= {cfg.stay_threshold:g}",
            )
        same = s_cur >= cfg.new_cluster_threshold
        cluster = current.cluster if same else 1 + max(b.cluster for b in state.branches)
        return Decision(
            action="BRANCH",
            drift_action="BRANCH_SAME_CLUSTER" if same else "BRANCH_NEW_CLUSTER",
            branch=len(state.branches),
            similarity=s_cur,
            confidence=_confidence(stay - cfg.stay_threshold),
            reason=f"{stay_note} < {cfg.stay_threshold:g}; new branch "
            + (
                "in the same cluster"
                if same
                else f"and cluster (similarity < {cfg.new_cluster_threshold:g})"
            ),
            is_new_branch=True,
            previous_branch=current.index,
            cluster=cluster,
        )

    @staticmethod
    def _stay(current: BranchState, similarity: float, confidence: float, reason: str):
        return Decision(
            action="STAY",
            drift_action="STAY",
            branch=current.index,
            similarity=similarity,
            confidence=confidence,
            reason=reason,
            is_new_branch=False,
            previous_branch=current.index,
            cluster=current.cluster,
        )

    @staticmethod
    def _route_target(
        state: ConversationState,
        cfg: RoutingConfig,
        current: BranchState,
        q: np.ndarray,
        projection: TopicProjection | None,
        words: list[str],
        text: str,
    ) -> tuple[BranchState | None, float, str]:
        """(best earlier branch, its route score, its anchoring word or ""), among
        the ``route_candidates`` most recently active other branches; (None,
        -inf, "") if there are none."""
        bonus = cfg.cue_weight if return_cue(text) else 0.0
        others = sorted(
            (b for b in state.branches if b.index != current.index), key=lambda b: -b.update_seq
        )[: cfg.route_candidates]
        best, best_score, best_anchor = None, -np.inf, ""
        for b in others:
            anchor = next(
                (w for w in words if b.words.counts[w] and not current.words.counts[w]), ""
            )
            score = b.centroid_similarity(q, projection) + bonus
            if anchor:
                score += cfg.anchor_weight
            if score > best_score:
                best, best_score, best_anchor = b, score, anchor
        return best, best_score, best_anchor

    def apply(
        self,
        state: ConversationState,
        cfg: RoutingConfig,
        decision: Decision,
        x: np.ndarray,
        text: str,
        time: float,
    ) -> BranchState:
        """Adds the message to the branch the decision names (creating it for
        BRANCH), makes that branch current and ``cfg`` the state's config.
        Returns the branch."""
        parent = decision.previous_branch
        if parent >= 0:  # before the new branch may take over its label
            parent = branch_of(state.labels, len(state.branches), state.current, parent, False)
        index = branch_of(
            state.labels,
            len(state.branches),
            state.current,
            decision.branch,
            decision.is_new_branch,
        )
        if decision.is_new_branch:
            branch = BranchState(
                index=index,
                parent=parent,
                cluster=decision.cluster,
                create_time=time,
                total=np.zeros_like(x),
            )
            state.branches.append(branch)
        else:
            branch = state.branches[index]
        words = content_words(text)
        branch.total += x
        branch.count += 1
        branch.recent.append(x.astype(np.float32))
        while len(branch.recent) > cfg.recent_messages:
            branch.recent.popleft()
        branch.update_seq = state.message_count
        branch.update_time = time
        branch.words.add(words)
        state.config = cfg
        state.current = branch.index
        state.message_count += 1
        state.seen_words.update(words)
        state.last_was_question = is_question(text)
        state.last_was_open = open_question(text)
        return branch
